"""``modelyard run MODEL [PROMPT]``: a chat in the terminal, as ``ollama run`` has it.

With a prompt (or text on standard input) the answer streams to standard output and the
command exits; without, an interactive chat: ``>>>`` reads a message (``\"\"\"`` opens and
closes a multi-line one), the answer streams as it is generated, Ctrl-C stops an answer,
Ctrl-D or ``/bye`` ends the chat. The model is loaded first, with a spinner while it loads.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.markup import escape

from modelyard.cli.client import UrlOption, call, err, events, server_url

HELP = """Available commands:
  /set system <text>   set the system message (applies from the next message)
  /show system         print the system message
  /clear               forget the conversation so far
  /bye                 exit (Ctrl-D too)
  /?, /help            this help

Use \"\"\" to begin and end a multi-line message. Ctrl-C stops an answer."""


@dataclass
class Chat:
    """One conversation with one model, over the server's OpenAI API."""

    base: str
    model: str
    system: str | None = None
    max_tokens: int | None = None
    keep_alive: str | None = None
    verbose: bool = False
    messages: list[dict[str, str]] = field(default_factory=list)

    def ask(self, text: str) -> bool:
        """Sends ``text``, prints the answer as it streams; ``False`` when it was stopped
        (Ctrl-C), in which case neither the message nor the partial answer is kept."""
        turn = [*self.messages, {"role": "user", "content": text}]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": ([{"role": "system", "content": self.system}] if self.system else [])
            + turn,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        answer: list[str] = []
        started = time.monotonic()
        first: float | None = None
        usage: dict[str, int] = {}
        frames = events(self.base, "/v1/chat/completions", body)
        try:
            with _waiting("thinking") as waiting:
                for frame in frames:
                    if "error" in frame:
                        waiting.stop()
                        message = frame["error"].get("message", frame["error"])
                        err.print(f"\n[red]Error:[/] {escape(str(message))}", soft_wrap=True)
                        raise typer.Exit(1)
                    usage = frame.get("usage") or usage
                    for choice in frame.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if not piece:
                            continue
                        if first is None:
                            first = time.monotonic()
                            waiting.stop()
                        answer.append(piece)
                        sys.stdout.write(piece)
                        sys.stdout.flush()
        except KeyboardInterrupt:
            frames.close()  # closes the connection: the server stops generating
            if answer:
                sys.stdout.write("\n")
                sys.stdout.flush()
            what = "the answer" if answer else "before the first word; nothing was kept"
            err.print(f"(stopped {what})", style="dim", highlight=False)
            return False
        sys.stdout.write("\n")
        sys.stdout.flush()
        self.messages = [*turn, {"role": "assistant", "content": "".join(answer)}]
        if self.verbose:
            _stats(usage, started, first)
        return True


def _stats(usage: dict[str, int], started: float, first: float | None) -> None:
    total = time.monotonic() - started
    completion = usage.get("completion_tokens", 0)
    generating = total - (first - started) if first is not None else 0.0
    rate = f"{completion / generating:.1f} tokens/s" if generating > 0 and completion else "-"
    first_text = f"{first - started:.2f}s" if first is not None else "-"
    err.print(
        f"prompt tokens {usage.get('prompt_tokens', '-')}, completion tokens {completion}, "
        f"first token after {first_text}, {rate}, total {total:.2f}s",
        style="dim",
        soft_wrap=True,
    )


class _Spinner:
    def __init__(self, text: str) -> None:
        self._status = err.status(text) if err.is_terminal else None
        self._running = False

    def start(self) -> None:
        if self._status is not None:
            self._status.start()
            self._running = True

    def stop(self) -> None:
        if self._running and self._status is not None:
            self._status.stop()
            self._running = False


@contextlib.contextmanager
def _waiting(text: str) -> Iterator[_Spinner]:
    """A spinner on standard error (when it is a terminal) until ``stop`` or the end."""
    spinner = _Spinner(text)
    spinner.start()
    try:
        yield spinner
    finally:
        spinner.stop()


def _find_chat_model(base: str, model: str) -> str:
    """The catalog name of ``model``; exits with one line when there is none, or when it
    cannot chat."""
    for entry in call(base, "GET", "/v1/models")["data"]:
        if model == entry["id"] or model in entry.get("aliases", []):
            if "chat" not in entry.get("capabilities", ["chat"]):
                kinds = ", ".join(entry["capabilities"])
                err.print(
                    f"[red]Error:[/] {escape(model)} cannot chat (it does {escape(kinds)}); "
                    "`modelyard run` needs a chat model.",
                    soft_wrap=True,
                )
                raise typer.Exit(1)
            return str(entry["id"])
    err.print(
        f"[red]Error:[/] model {escape(model)!r} not found. `modelyard ls` lists the models; "
        "`modelyard pull REPO` fetches one.",
        soft_wrap=True,
    )
    raise typer.Exit(1)


def _read_message(first: str) -> str | None:
    """A message begun with ``first``: one line, or ``\"\"\"…\"\"\"`` over several; ``None``
    when input ends inside one."""
    if not first.startswith('"""'):
        return first
    lines = [first[3:]]
    while not lines[-1].endswith('"""') or (len(lines) == 1 and lines[0] == ""):
        try:
            lines.append(input("... "))
        except EOFError:
            return None
    lines[-1] = lines[-1][:-3]
    return "\n".join(lines).strip("\n")


def _interactive(chat: Chat) -> None:
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    greeting = f"Chatting with {chat.model}. Type /? for help, /bye to exit."
    err.print(greeting, style="dim", highlight=False, markup=False)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            sys.stdout.write("\n")
            return
        except KeyboardInterrupt:
            sys.stdout.write("\nUse Ctrl-D or /bye to exit.\n")
            continue
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("/") and not stripped.startswith("//"):
            if not _command(chat, stripped):
                return
            continue
        try:
            message = _read_message(line)
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            continue
        if message is None:
            return
        if message.strip():
            chat.ask(message)


def _command(chat: Chat, line: str) -> bool:
    """Runs a ``/`` command; ``False`` to end the chat."""
    name, _, rest = line.partition(" ")
    if name == "/bye":
        return False
    if name in ("/?", "/help"):
        print(HELP)
    elif name == "/clear":
        chat.messages.clear()
        print("Cleared the conversation.")
    elif name == "/set" and rest.strip().startswith("system"):
        text = rest.strip().removeprefix("system").strip()
        chat.system = text or None
        print("Set the system message." if text else "Cleared the system message.")
    elif name == "/show" and rest.strip() == "system":
        print(chat.system or "No system message.")
    else:
        print(f"Unknown command {line!r}. Type /? for help.")
    return True


def run(
    model: Annotated[str, typer.Argument(help="A model's name or alias (see modelyard ls).")],
    prompt: Annotated[
        list[str] | None,
        typer.Argument(help="Ask this and exit; without it, an interactive chat."),
    ] = None,
    system: Annotated[str | None, typer.Option(help="A system message.")] = None,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="Longest answer, in tokens.")
    ] = None,
    keep_alive: Annotated[
        str | None, typer.Option(help="Keep the model loaded this long after (5m, -1).")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Print token counts and speed after each answer.")
    ] = False,
    url: UrlOption = None,
) -> None:
    """Chat with a model: answer PROMPT and exit, or an interactive chat without one."""
    # Ctrl-C stops an answer, even when started from a shell that ignores SIGINT (a
    # background job): that disposition is inherited, and Python then never raises.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    base = server_url(url)
    name = _find_chat_model(base, model)
    text = " ".join(prompt or [])
    if not sys.stdin.isatty():
        piped = sys.stdin.read().strip()
        text = f"{text}\n\n{piped}".strip() if piped else text
    load: dict[str, Any] = {"model": name}
    if keep_alive is not None:
        load["keep_alive"] = keep_alive
    try:
        with _waiting(f"loading {name}"):
            call(base, "POST", "/api/load", load, timeout=None)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    chat = Chat(base, name, system, max_tokens, keep_alive, verbose)
    if text:
        if not chat.ask(text):
            raise typer.Exit(130)
        return
    if not sys.stdin.isatty():
        err.print("[red]Error:[/] no prompt: give one, or pipe text in.")
        raise typer.Exit(2)
    _interactive(chat)
