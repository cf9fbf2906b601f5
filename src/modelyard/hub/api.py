"""The Hugging Face hub as modelyard uses it: which commit a reference points at, the files
there with their sizes and checksums, download URLs, and one HTTP client with the hub's
headers. Addresses, credentials and the offline switch come from ``huggingface_hub``
(``HF_ENDPOINT``, ``HF_TOKEN`` or the stored login, ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from modelyard import __version__
from modelyard.errors import HubError, HubNotFoundError
from modelyard.hub.ref import Reference


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None
    blob_id: str | None


@dataclass
class Hub:
    """Where models come from: the hub's address, credentials and offline switch.

    ``None`` takes ``huggingface_hub``'s own settings (``HF_ENDPOINT``, ``HF_TOKEN`` or the
    stored login, ``HF_HUB_OFFLINE``).
    """

    endpoint: str | None = None
    token: str | None = None
    offline: bool | None = None
    timeout: float = 30.0
    _client: httpx.Client | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from huggingface_hub import constants

        self.endpoint = (self.endpoint or constants.ENDPOINT).rstrip("/")
        if self.offline is None:
            self.offline = bool(constants.HF_HUB_OFFLINE)

    def resolve(self, ref: Reference) -> tuple[str, list[RemoteFile]]:
        """The commit ``ref.revision`` points at, and the repository's files there."""
        from huggingface_hub import HfApi
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        api = HfApi(endpoint=self.endpoint, token=self.token, library_name="modelyard")
        try:
            info = api.model_info(
                ref.repo, revision=ref.revision, files_metadata=True, timeout=self.timeout
            )
        except GatedRepoError:
            raise HubError(
                f"{ref.repo} is gated: accept its terms on the hub, then set HF_TOKEN",
                param="model",
            ) from None
        except RepositoryNotFoundError:
            raise HubNotFoundError(
                f"{ref.repo} was not found on {self.endpoint} (or it is private: set HF_TOKEN)",
                param="model",
            ) from None
        except RevisionNotFoundError:
            raise HubNotFoundError(
                f"{ref.repo} has no revision {ref.revision!r}", param="model"
            ) from None
        except HfHubHTTPError as exc:  # the hub answered, with an error status
            raise HubError(f"the hub at {self.endpoint} refused: {exc}") from None
        # The HTTP library under huggingface_hub raises OSError subclasses for the network.
        except OSError as exc:
            raise HubError(
                f"cannot reach the hub at {self.endpoint} ({network_reason(exc)}). Set "
                "HF_ENDPOINT to reach a mirror, or HF_HUB_OFFLINE=1 to use only the models "
                "already here"
            ) from None
        if not info.sha or info.siblings is None:
            raise HubError(f"{self.endpoint} sent no commit or file list for {ref.repo}")
        files = [
            RemoteFile(
                path=s.rfilename,
                size=s.lfs.size if s.lfs else (s.size or 0),
                sha256=s.lfs.sha256 if s.lfs else None,
                blob_id=s.blob_id,
            )
            for s in info.siblings
        ]
        return info.sha, files

    def url(self, repo: str, commit: str, path: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(repo, path, revision=commit, endpoint=self.endpoint)

    def client(self) -> httpx.Client:
        if self._client is None:
            # Documented as public; the package does not list it in an __all__.
            from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

            headers = build_hf_headers(
                token=self.token, library_name="modelyard", library_version=__version__
            )
            self._client = httpx.Client(
                headers=headers,
                follow_redirects=True,
                timeout=httpx.Timeout(self.timeout, read=60.0),
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def network_reason(exc: BaseException) -> str:
    """A few words for why a connection failed, out of a chain of library wrappers."""
    text = str(exc)
    for needle, reason in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "host not found"),
        ("Temporary failure in name resolution", "host not found"),
        ("getaddrinfo failed", "host not found"),
        ("timed out", "timed out"),
        ("Network is unreachable", "network unreachable"),
        ("CERTIFICATE_VERIFY_FAILED", "certificate not trusted"),
    ):
        if needle in text:
            return reason
    return type(exc).__name__
