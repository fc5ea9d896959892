"""Weights pulls through the real huggingface_hub client against a Hub double on 127.0.0.1.

Only the server is fake (`tests/support/hub_double.py`); revision resolution, tree listing with
pagination, HEAD metadata, Range resumes and error mapping are huggingface_hub 2.4's own code.
The conftest forces `HF_HUB_OFFLINE=1` for every test; these tests turn it off for themselves.
Nothing asserts on wall-clock time.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import (
    BadInputError,
    EnvironmentNotReadyError,
    ExitCode,
    OperationFailedError,
    RefusedError,
)
from appliance.weights import (
    DownloadCancelledError,
    DownloadProgress,
    HubToken,
    find_installed,
    list_weights,
    plan_pull,
    pull_weights,
    resolve_token,
    revision_dir,
    snapshot_dir,
)
from tests.support.hub_double import HubDouble, tiny_model_files

REPO = "tiny-org/tiny-model"
WANTED = {
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
}
CHUNK = 64 * 1024
PLENTY = lambda _path: 1 << 50  # noqa: E731 - free-space probe that never runs short


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Let huggingface_hub reach the (loopback) network, with small download chunks.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so the constant is patched as well.
    64 KiB chunks (10 MiB by default) let a 3 MiB file be cut and resumed at a chunk boundary.
    """
    import huggingface_hub.constants as hub_constants  # noqa: TID251 - test setup

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-login-token"))
    monkeypatch.setattr(hub_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))


@pytest.fixture
def hub(online: None) -> Iterator[HubDouble]:
    double = HubDouble(page_size=3)
    double.add_repo(REPO, tiny_model_files())
    with double.running():
        yield double


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


def _resolve_gets(hub: HubDouble) -> list[str]:
    return [r.path for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]


def test_pull_fetches_engine_files_only_and_records_the_commit(
    hub: HubDouble, models_dir: Path
) -> None:
    reports: list[DownloadProgress] = []
    repo = hub.repos[REPO]

    installed = pull_weights(
        REPO, models_dir=models_dir, endpoint=hub.url, on_progress=reports.append, free_bytes=PLENTY
    )

    assert installed.sha == repo.sha
    snapshot = snapshot_dir(models_dir, REPO, repo.sha)
    assert installed.path == snapshot
    on_disk = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    assert on_disk == WANTED  # no pytorch_model.bin, no README, no bookkeeping
    for name in WANTED:
        assert (snapshot / name).read_bytes() == repo.files[name]
    assert {f.path: f.sha256 for f in installed.files} == {
        n: hashlib.sha256(repo.files[n]).hexdigest() for n in WANTED
    }
    # The revision is recorded, and the revision path the runtime mounts leads to the snapshot.
    assert (models_dir / REPO / "refs" / "main").read_text().strip() == repo.sha
    assert revision_dir(models_dir, REPO, "main").resolve() == snapshot.resolve()
    assert not (models_dir / REPO / ".partial").exists()
    # Progress is in bytes, with the total known from the first report on.
    total = sum(len(repo.files[n]) for n in WANTED)
    assert reports
    assert {r.bytes_total for r in reports} == {total}
    done = [r.bytes_done for r in reports]
    assert done == sorted(done)
    assert reports[-1].phase == "done"
    assert reports[-1].bytes_done == total
    assert reports[-1].files_done == len(WANTED)

    listed = list_weights(models_dir)
    assert [(w.repo, w.sha, w.revisions) for w in listed] == [(REPO, repo.sha, ("main", repo.sha))]
    assert listed[0].to_json()["size_bytes"] == total


def test_second_pull_is_a_no_op(hub: HubDouble, models_dir: Path) -> None:
    pull_weights(REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)
    before = len(_resolve_gets(hub))
    heads = len([r for r in hub.requests if r.method == "HEAD"])

    again = pull_weights(REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)

    assert again.sha == hub.repos[REPO].sha
    assert len(_resolve_gets(hub)) == before
    assert len([r for r in hub.requests if r.method == "HEAD"]) == heads


def test_tree_listing_follows_link_pagination(hub: HubDouble, models_dir: Path) -> None:
    plan = plan_pull(REPO, models_dir=models_dir, endpoint=hub.url)

    tree_calls = [r.path for r in hub.requests if "/tree/" in r.path]
    assert len(tree_calls) == 3  # 8 files, 3 a page
    assert {f.path for f in plan.files} == WANTED
    assert plan.bytes_to_fetch == plan.bytes_total
    assert not _resolve_gets(hub)  # preflight fetched no file bytes


def test_dropped_connection_resumes_with_a_range_request(hub: HubDouble, models_dir: Path) -> None:
    hub.cut_once("model.safetensors", after_bytes=16 * CHUNK)

    pull_weights(REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)

    gets = hub.requests_for("/model.safetensors")
    assert [g.header("Range") for g in gets] == [None, f"bytes={16 * CHUNK}-"]
    data = (snapshot_dir(models_dir, REPO, hub.repos[REPO].sha) / "model.safetensors").read_bytes()
    assert data == hub.repos[REPO].files["model.safetensors"]


def test_interrupted_run_resumes_on_the_next_run(hub: HubDouble, models_dir: Path) -> None:
    hub.fail_after_cut("model.safetensors", after_bytes=16 * CHUNK)

    with pytest.raises(OperationFailedError) as failed:
        pull_weights(REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)
    assert "503" in failed.value.message
    assert "resume" in (failed.value.hint or "")
    # Nothing a later run (or the runtime) would trust: no manifest, no listing, no revision link.
    assert list_weights(models_dir) == []
    assert find_installed(models_dir, REPO, "main") is None
    partial = models_dir / REPO / ".partial" / hub.repos[REPO].sha / "model.safetensors"
    assert partial.stat().st_size == 16 * CHUNK

    plan = plan_pull(REPO, models_dir=models_dir, endpoint=hub.url)
    assert plan.bytes_on_disk >= 16 * CHUNK
    installed = pull_weights(REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)

    ranges = [g.header("Range") for g in hub.requests_for("/model.safetensors")]
    assert ranges[-1] == f"bytes={16 * CHUNK}-"
    assert (installed.path / "model.safetensors").read_bytes() == hub.repos[REPO].files[
        "model.safetensors"
    ]


def test_cancel_keeps_what_arrived_and_the_next_pull_resumes(
    hub: HubDouble, models_dir: Path
) -> None:
    cancel = threading.Event()
    ticks = itertools.count()  # a fake clock one second a call: every chunk is reported

    def stop_midway(report: DownloadProgress) -> None:
        if report.file == "model.safetensors" and report.bytes_done > 8 * CHUNK:
            cancel.set()

    with pytest.raises(DownloadCancelledError) as cancelled:
        pull_weights(
            REPO,
            models_dir=models_dir,
            endpoint=hub.url,
            on_progress=stop_midway,
            cancel=cancel,
            free_bytes=PLENTY,
            max_workers=1,
            clock=lambda: float(next(ticks)),
        )
    assert cancelled.value.exit_code == ExitCode.INTERRUPTED
    assert list_weights(models_dir) == []
    partial = models_dir / REPO / ".partial" / hub.repos[REPO].sha / "model.safetensors"
    kept = partial.stat().st_size
    assert 0 < kept < len(hub.repos[REPO].files["model.safetensors"])

    pull_weights(REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)

    assert hub.requests_for("/model.safetensors")[-1].header("Range") == f"bytes={kept}-"
    assert [w.repo for w in list_weights(models_dir)] == [REPO]


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_corrupted_file_is_detected_and_downloaded_again(
    hub: HubDouble, models_dir: Path, name: str
) -> None:
    hub.corrupt_once(name)

    installed = pull_weights(REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)

    assert len(hub.requests_for(f"/{name}")) == 2
    assert (installed.path / name).read_bytes() == hub.repos[REPO].files[name]


def test_a_file_damaged_twice_fails_and_leaves_nothing_trusted(
    hub: HubDouble, models_dir: Path
) -> None:
    hub.corrupt_once("model.safetensors", times=2)

    with pytest.raises(OperationFailedError, match="damaged twice"):
        pull_weights(REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)

    sha = hub.repos[REPO].sha
    assert not (snapshot_dir(models_dir, REPO, sha) / "model.safetensors").exists()
    assert not (models_dir / REPO / ".partial" / sha / "model.safetensors").exists()
    assert list_weights(models_dir) == []


def test_gated_repo_without_a_token_is_refused_with_the_licence_url(
    hub: HubDouble, models_dir: Path
) -> None:
    hub.add_repo("meta-llama/gated", tiny_model_files(), gated=True, allowed_tokens=frozenset())

    with pytest.raises(RefusedError) as refused:
        pull_weights("meta-llama/gated", models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)

    text = refused.value.render()
    assert "gated" in text
    assert "no Hugging Face token" in text
    assert f"{hub.url}/meta-llama/gated" in text
    assert "HF_TOKEN" in text
    assert not _resolve_gets(hub)  # refused before any byte


def test_gated_repo_with_a_token_without_access_says_so(hub: HubDouble, models_dir: Path) -> None:
    hub.add_repo("meta-llama/gated", tiny_model_files(), gated=True, allowed_tokens=frozenset())

    with pytest.raises(RefusedError) as refused:
        pull_weights(
            "meta-llama/gated",
            models_dir=models_dir,
            endpoint=hub.url,
            token=HubToken("hf_notgranted", "HF_TOKEN"),
            free_bytes=PLENTY,
        )

    assert "has not been granted access" in refused.value.message
    assert "hf_notgranted" not in refused.value.render()


def test_gated_repo_with_access_downloads(hub: HubDouble, models_dir: Path) -> None:
    hub.add_repo(
        "meta-llama/gated", tiny_model_files(), gated=True, allowed_tokens=frozenset({"hf_ok"})
    )

    installed = pull_weights(
        "meta-llama/gated",
        models_dir=models_dir,
        endpoint=hub.url,
        token=HubToken("hf_ok", "HF_TOKEN"),
        free_bytes=PLENTY,
    )

    assert {f.path for f in installed.files} == WANTED
    assert all(
        r.header("Authorization") == "Bearer hf_ok" for r in hub.requests if "/resolve/" in r.path
    )


def test_missing_repo_is_bad_input(hub: HubDouble, models_dir: Path) -> None:
    with pytest.raises(BadInputError) as bad:
        pull_weights("nobody/nothing", models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)

    assert bad.value.exit_code == ExitCode.BAD_INPUT
    assert "nobody/nothing was not found" in bad.value.message
    assert not (models_dir / "nobody").exists() or not any((models_dir / "nobody").rglob("*.json"))


def test_missing_revision_is_bad_input(hub: HubDouble, models_dir: Path) -> None:
    with pytest.raises(BadInputError) as bad:
        pull_weights(REPO, "v9.9", models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)

    assert bad.value.message == f"{REPO} has no revision 'v9.9'"
    assert "40-character" in (bad.value.hint or "")


def test_a_repo_without_safetensors_is_refused_before_any_byte(
    hub: HubDouble, models_dir: Path
) -> None:
    hub.add_repo(
        "old/pickles", {"config.json": b"{}", "pytorch_model.bin": b"\0" * 1024, "vocab.txt": b"a"}
    )

    with pytest.raises(BadInputError) as bad:
        pull_weights("old/pickles", models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)

    assert "no .safetensors" in bad.value.message
    assert "pytorch_model.bin" in bad.value.message
    assert "never pickled" in (bad.value.hint or "")
    assert not [r for r in hub.requests if "/resolve/" in r.path]


def test_a_repo_with_a_broken_safetensors_file_is_not_installed(
    hub: HubDouble, models_dir: Path
) -> None:
    """The Hub's hashes only prove the bytes are the repo's; the header must still load."""
    hub.add_repo(
        "broken/weights", {"config.json": b"{}", "model.safetensors": b"\x14" + b"\0" * 19}
    )

    with pytest.raises(BadInputError, match=r"model\.safetensors is not a valid safetensors"):
        pull_weights("broken/weights", models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)

    assert list_weights(models_dir) == []
    assert find_installed(models_dir, "broken/weights", "main") is None


def test_too_little_disk_is_refused_before_any_byte(hub: HubDouble, models_dir: Path) -> None:
    asked: list[Path] = []

    def small_disk(path: Path) -> int:
        asked.append(path)
        return 100 * 1024 * 1024  # 100 MiB free; the 2 GiB headroom is not there

    with pytest.raises(EnvironmentNotReadyError) as short:
        pull_weights(REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=small_disk)

    assert asked == [models_dir]
    assert "not enough free disk" in short.value.message
    assert "100.0 MiB is free" in short.value.message
    assert not _resolve_gets(hub)
    assert not (models_dir / REPO / ".partial").exists() or not any(
        (models_dir / REPO / ".partial").rglob("*")
    )


def test_margin_can_be_set_explicitly(hub: HubDouble, models_dir: Path) -> None:
    needed = sum(len(hub.repos[REPO].files[n]) for n in WANTED)
    pull_weights(
        REPO,
        models_dir=models_dir,
        endpoint=hub.url,
        free_bytes=lambda _p: needed + 10,
        margin_bytes=10,
    )
    assert [w.repo for w in list_weights(models_dir)] == [REPO]


def test_offline_mode_is_reported_as_an_environment_problem(
    hub: HubDouble, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hub_constants  # noqa: TID251 - test setup

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(EnvironmentNotReadyError, match="HF_HUB_OFFLINE"):
        pull_weights(REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)


def test_an_unreachable_hub_is_an_environment_problem(online: None, models_dir: Path) -> None:
    double = HubDouble()
    with double.running():
        url = double.url  # a port that was just closed
    with pytest.raises(EnvironmentNotReadyError, match="cannot reach the Hub"):
        pull_weights(REPO, models_dir=models_dir, endpoint=url, free_bytes=PLENTY)


def test_the_token_is_never_printed_or_logged(
    hub: HubDouble,
    models_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import huggingface_hub.constants as hub_constants  # noqa: TID251 - test setup

    secret = "hf_SeCrEt1234567890abcdefTOKEN"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setattr(hub_constants, "HF_DEBUG", True)  # huggingface_hub logs every request
    hub.add_repo(
        "meta-llama/gated", tiny_model_files(), gated=True, allowed_tokens=frozenset({secret})
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    hub_logger = logging.getLogger("huggingface_hub")
    hub_logger.addHandler(handler)
    old_level = hub_logger.level
    hub_logger.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    reports: list[DownloadProgress] = []
    try:
        token = resolve_token()
        assert token is not None
        assert token.source == "HF_TOKEN"
        installed = pull_weights(
            "meta-llama/gated",
            models_dir=models_dir,
            endpoint=hub.url,
            token=token,
            on_progress=reports.append,
            free_bytes=PLENTY,
        )
        with pytest.raises(RefusedError) as refused:
            pull_weights(
                "meta-llama/gated",
                "main",
                models_dir=models_dir / "other",
                endpoint=hub.url,
                token=HubToken(secret + "-wrong", "HF_TOKEN"),
                free_bytes=PLENTY,
            )
    finally:
        hub_logger.removeHandler(handler)
        hub_logger.setLevel(old_level)

    # The token was really used...
    assert any(r.header("Authorization") == f"Bearer {secret}" for r in hub.requests)
    assert stream.getvalue()  # ...and huggingface_hub did log (debug curl lines)...
    # ...but it appears nowhere a person or a log file would see it.
    out, err = capfd.readouterr()
    seen = [
        out,
        err,
        stream.getvalue(),
        caplog.text,
        repr(token),
        str(token),
        refused.value.render(),
        repr(reports),
        repr(installed),
        *(p.read_text() for p in models_dir.rglob("*.json")),
        *(p.read_text() for p in (models_dir / "tiny-org").rglob("refs/*") if p.is_file()),
    ]
    assert all(secret not in text for text in seen)


def test_lfs_files_come_from_the_cdn_without_the_token(online: None, models_dir: Path) -> None:
    """As on the real Hub: /resolve/ of an LFS file redirects to a signed URL on another host."""
    double = HubDouble(lfs_redirect=True)
    double.add_repo(
        "meta-llama/gated", tiny_model_files(), gated=True, allowed_tokens=frozenset({"hf_ok"})
    )
    double.cut_once("model.safetensors", after_bytes=8 * CHUNK)
    with double.running():
        installed = pull_weights(
            "meta-llama/gated",
            models_dir=models_dir,
            endpoint=double.url,
            token=HubToken("hf_ok", "HF_TOKEN"),
            free_bytes=PLENTY,
        )

    assert (installed.path / "model.safetensors").read_bytes() == double.repos[
        "meta-llama/gated"
    ].files["model.safetensors"]
    cdn = [r for r in double.requests if r.path.startswith("/cdn/")]
    assert [r.header("Range") for r in cdn] == [None, f"bytes={8 * CHUNK}-"]
    assert all(r.header("Authorization") is None for r in cdn)
    hub_side = [r for r in double.requests if "/resolve/" in r.path]
    assert hub_side
    assert all(r.header("Authorization") == "Bearer hf_ok" for r in hub_side)


PROFILE_TEXT = """
apiVersion: llm-appliance/v1
kind: Profile
metadata:
  name: tiny
spec:
  model:
    repo: tiny-org/tiny-model
    quantization: bf16
    lora_adapters:
      - name: support
        repo: tiny-org/support-lora
  engine:
    max_lora_rank: 16
  embeddings:
    repo: tiny-org/tiny-embed
  storage:
    models_dir: {models_dir}
"""


def _profile_hub(hub: HubDouble) -> None:
    adapter = tiny_model_files(weight_bytes=64 * 1024, seed=2)
    hub.add_repo(
        "tiny-org/support-lora",
        {
            "adapter_model.safetensors": adapter["model.safetensors"],
            "adapter_config.json": b'{"r": 16}',
        },
    )
    hub.add_repo("tiny-org/tiny-embed", tiny_model_files(weight_bytes=128 * 1024, seed=3))


def test_pull_profile_fetches_model_adapter_and_embeddings(
    hub: HubDouble, models_dir: Path
) -> None:
    from appliance.profile import parse_profile
    from appliance.weights import pull_profile

    _profile_hub(hub)
    profile = parse_profile(PROFILE_TEXT.format(models_dir=models_dir), "tiny.yaml")

    pulled = pull_profile(profile, endpoint=hub.url, free_bytes=PLENTY)

    assert [w.repo for w in pulled] == [
        "tiny-org/tiny-model",
        "tiny-org/support-lora",
        "tiny-org/tiny-embed",
    ]
    listed = list_weights(models_dir, profiles=[profile])
    assert {w.repo: w.used_by for w in listed} == {
        "tiny-org/tiny-model": ("tiny",),
        "tiny-org/support-lora": ("tiny",),
        "tiny-org/tiny-embed": ("tiny",),
    }
    assert {f.path for f in pulled[1].files} == {"adapter_model.safetensors", "adapter_config.json"}


def test_pull_profile_checks_disk_for_the_sum_before_any_byte(
    hub: HubDouble, models_dir: Path
) -> None:
    from appliance.profile import parse_profile
    from appliance.weights import pull_profile

    _profile_hub(hub)
    profile = parse_profile(PROFILE_TEXT.format(models_dir=models_dir), "tiny.yaml")
    model_bytes = plan_pull(REPO, models_dir=models_dir, endpoint=hub.url).bytes_total

    with pytest.raises(EnvironmentNotReadyError, match="not enough free disk"):
        pull_profile(
            profile,
            endpoint=hub.url,
            free_bytes=lambda _p: model_bytes + 1,  # room for the model alone, not for all three
            margin_bytes=0,
        )
    assert not _resolve_gets(hub)


def test_offline_pull_of_weights_already_on_the_box_is_a_no_op(
    hub: HubDouble, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hub_constants  # noqa: TID251 - test setup

    first = pull_weights(REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    seen = len(hub.requests)

    again = pull_weights(REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)

    assert again == first
    assert len(hub.requests) == seen
    with pytest.raises(EnvironmentNotReadyError, match="HF_HUB_OFFLINE"):
        pull_weights(REPO, "v2", models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)


# --- parallel range requests and Xet --------------------------------------------------------------

PIECE = 256 * 1024  # chunk size for these tests: the 3 MiB weights file is 13 chunks


def _ranges(hub: HubDouble, name: str, since: int = 0) -> list[tuple[int, int]]:
    """(start, end exclusive) of every ranged GET of `name` from the `since`-th on, in order."""
    found = []
    for r in hub.requests_for(f"/{name}")[since:]:
        a, _, b = (r.header("Range") or "").removeprefix("bytes=").partition("-")
        found.append((int(a), int(b) + 1))
    return found


def _tiles(ranges: list[tuple[int, int]], size: int) -> bool:
    """The ranges cover [0, size) exactly, without overlap, in more than one piece."""
    ordered = sorted(ranges)
    return (
        len(ordered) > 1
        and ordered[0][0] == 0
        and ordered[-1][1] == size
        and all(a[1] == b[0] for a, b in itertools.pairwise(ordered))
    )


def test_a_large_file_arrives_as_parallel_chunks_identical_and_verified(
    hub: HubDouble, models_dir: Path
) -> None:
    reports: list[DownloadProgress] = []
    data = hub.repos[REPO].files["model.safetensors"]

    installed = pull_weights(
        REPO,
        models_dir=models_dir,
        endpoint=hub.url,
        on_progress=reports.append,
        free_bytes=PLENTY,
        chunk_bytes=PIECE,
        clock=lambda: float(len(reports)),  # every byte count is reported
    )

    assert (installed.path / "model.safetensors").read_bytes() == data
    assert {f.path: f.sha256 for f in installed.files}["model.safetensors"] == (
        hashlib.sha256(data).hexdigest()
    )
    # One request per chunk, each a closed range; together exactly the file.
    assert _tiles(_ranges(hub, "model.safetensors"), len(data))
    # Small files are still one plain stream each.
    assert [r.header("Range") for r in hub.requests_for("/config.json")] == [None]
    # Byte progress is exact: never past the total, ending on it.
    total = sum(len(hub.repos[REPO].files[n]) for n in WANTED)
    assert {r.bytes_total for r in reports} == {total}
    assert max(r.bytes_done for r in reports) == total
    assert reports[-1].bytes_done == total
    assert not list((models_dir / REPO).rglob("*.chunks.json"))


def test_cancel_mid_way_resumes_without_fetching_finished_chunks_again(
    hub: HubDouble, models_dir: Path
) -> None:
    data = hub.repos[REPO].files["model.safetensors"]
    cancel = threading.Event()
    ticks = itertools.count()

    def stop_midway(report: DownloadProgress) -> None:
        if report.file == "model.safetensors" and report.bytes_done > len(data) // 2:
            cancel.set()

    with pytest.raises(DownloadCancelledError):
        pull_weights(
            REPO,
            models_dir=models_dir,
            endpoint=hub.url,
            on_progress=stop_midway,
            cancel=cancel,
            free_bytes=PLENTY,
            max_workers=2,
            chunk_bytes=PIECE,
            clock=lambda: float(next(ticks)),
        )
    first = len(hub.requests_for("/model.safetensors"))
    partial = models_dir / REPO / ".partial" / hub.repos[REPO].sha / "model.safetensors"
    recorded = json.loads(partial.with_name("model.safetensors.chunks.json").read_text())
    kept = {(a, b) for a, b in recorded["done"]}
    assert kept  # some chunks finished before the cancel…
    kept_bytes = sum(b - a for a, b in kept)
    assert kept_bytes < len(data)  # …and not all of them
    plan = plan_pull(REPO, models_dir=models_dir, endpoint=hub.url)
    snapshot = snapshot_dir(models_dir, REPO, hub.repos[REPO].sha)
    finished = sum(p.stat().st_size for p in snapshot.rglob("*") if p.is_file())
    assert plan.bytes_on_disk == finished + kept_bytes  # the full-size partial counts as recorded

    reports: list[DownloadProgress] = []
    installed = pull_weights(
        REPO,
        models_dir=models_dir,
        endpoint=hub.url,
        on_progress=reports.append,
        free_bytes=PLENTY,
        chunk_bytes=PIECE,
        clock=lambda: float(len(reports)),
    )

    again = _ranges(hub, "model.safetensors")[first:]
    for a, b in again:  # nothing recorded as done is asked for again
        assert not any(x < b and a < y for x, y in kept), (a, b)
    assert sum(b - a for a, b in again) == len(data) - kept_bytes
    assert (installed.path / "model.safetensors").read_bytes() == data
    total = sum(len(hub.repos[REPO].files[n]) for n in WANTED)
    assert max(r.bytes_done for r in reports) == reports[-1].bytes_done == total


def test_a_chunk_dropped_mid_way_is_asked_for_again_from_where_it_stopped(
    hub: HubDouble, models_dir: Path
) -> None:
    data = hub.repos[REPO].files["model.safetensors"]
    hub.cut_once("model.safetensors", after_bytes=100_000)

    installed = pull_weights(
        REPO,
        models_dir=models_dir,
        endpoint=hub.url,
        free_bytes=PLENTY,
        chunk_bytes=PIECE,
    )

    ranges = _ranges(hub, "model.safetensors")
    ends = {b for _, b in ranges}
    resumed = [(a, b) for a, b in ranges if a != 0 and a not in ends]
    assert len(resumed) == 1  # one chunk was asked for again: the rest of it only
    chunks = [r for r in ranges if r not in resumed]
    assert _tiles(chunks, len(data))
    assert any(a + 100_000 == resumed[0][0] and b == resumed[0][1] for a, b in chunks)
    assert (installed.path / "model.safetensors").read_bytes() == data


def test_a_chunked_file_damaged_in_transit_is_fetched_again(
    hub: HubDouble, models_dir: Path
) -> None:
    data = hub.repos[REPO].files["model.safetensors"]
    hub.corrupt_once("model.safetensors")

    installed = pull_weights(
        REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY, chunk_bytes=PIECE
    )

    ranges = _ranges(hub, "model.safetensors")
    assert _tiles(ranges[: len(ranges) // 2], len(data))  # every chunk twice: the hash failed
    assert _tiles(ranges[len(ranges) // 2 :], len(data))
    assert (installed.path / "model.safetensors").read_bytes() == data


class _FakeXetGroup:
    """hf_xet's download group as huggingface_hub's `xet_get` drives it; writes the Hub's bytes."""

    def __init__(self, files: dict[str, bytes], calls: list[dict[str, object]], **kw: object):
        self.files, self.calls, self.kw = files, calls, kw

    def __enter__(self) -> _FakeXetGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def start_download_file(self, info: object, path: str) -> None:
        import types

        data = self.files[Path(path).name]
        self.calls.append({"hash": info.hash, "size": info.file_size, "path": path, **self.kw})  # type: ignore[attr-defined]
        done = 0
        with open(path, "wb") as handle:  # noqa: PTH123 - as hf_xet writes it
            for offset in range(0, len(data), PIECE):
                handle.write(data[offset : offset + PIECE])
                done = min(offset + PIECE, len(data))
                report = types.SimpleNamespace(
                    total_bytes=len(data),
                    total_bytes_completed=done,
                    total_transfer_bytes_completed=done // 2,
                    total_bytes_completion_rate=0.0,
                    total_transfer_bytes_completion_rate=0.0,
                )
                self.kw["progress_callback"](report, {})  # type: ignore[operator]


@pytest.fixture
def xet_hub(hub: HubDouble, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """The weights file is Xet-backed on the double; hf_xet's session is replaced by one that
    writes the bytes (no CAS server is reachable here). Returns the downloads it was asked for."""
    import types

    import huggingface_hub.utils._xet as hub_xet  # noqa: TID251 - test setup

    hub.mark_xet_backed(REPO, "model.safetensors")
    calls: list[dict[str, object]] = []
    files = hub.repos[REPO].files
    session = types.SimpleNamespace(
        new_file_download_group=lambda **kw: _FakeXetGroup(files, calls, **kw)
    )
    monkeypatch.setattr(hub_xet, "get_xet_session", lambda: session)
    return calls


def test_a_xet_backed_file_goes_through_hf_xet_with_progress_and_verification(
    hub: HubDouble, xet_hub: list[dict[str, object]], models_dir: Path
) -> None:
    data = hub.repos[REPO].files["model.safetensors"]
    reports: list[DownloadProgress] = []

    installed = pull_weights(
        REPO,
        models_dir=models_dir,
        endpoint=hub.url,
        on_progress=reports.append,
        free_bytes=PLENTY,
        chunk_bytes=PIECE,
        clock=lambda: float(len(reports)),
    )

    xet_hash = hashlib.sha256(b"xet" + hashlib.sha256(data).hexdigest().encode()).hexdigest()
    assert [c["hash"] for c in xet_hub] == [xet_hash]
    assert xet_hub[0]["size"] == len(data)
    assert str(xet_hub[0]["path"]).endswith(
        "/.partial/" + hub.repos[REPO].sha + "/model.safetensors"
    )
    assert xet_hub[0]["token"] == "xet-read-token"
    assert hub.requests_for("/model.safetensors") == []  # no HTTP GET of the bytes
    assert (installed.path / "model.safetensors").read_bytes() == data
    total = sum(len(hub.repos[REPO].files[n]) for n in WANTED)
    assert max(r.bytes_done for r in reports) == reports[-1].bytes_done == total


def test_a_xet_backed_file_without_hf_xet_falls_back_to_parallel_ranges(
    hub: HubDouble,
    xet_hub: list[dict[str, object]],
    models_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import huggingface_hub.utils._runtime as hub_runtime  # noqa: TID251 - test setup

    monkeypatch.setattr(hub_runtime, "is_xet_available", lambda: False)
    data = hub.repos[REPO].files["model.safetensors"]

    installed = pull_weights(
        REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY, chunk_bytes=PIECE
    )

    assert xet_hub == []
    assert _tiles(_ranges(hub, "model.safetensors"), len(data))
    assert (installed.path / "model.safetensors").read_bytes() == data


def test_a_single_stream_partial_is_finished_by_chunks_from_where_it_stopped(
    hub: HubDouble, models_dir: Path
) -> None:
    data = hub.repos[REPO].files["model.safetensors"]
    hub.fail_after_cut("model.safetensors", after_bytes=1_000_000)
    with pytest.raises(OperationFailedError):  # one stream (the default chunk is 64 MiB)
        pull_weights(REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY)
    partial = models_dir / REPO / ".partial" / hub.repos[REPO].sha / "model.safetensors"
    kept = partial.stat().st_size
    assert 0 < kept < len(data)
    first = len(hub.requests_for("/model.safetensors"))

    installed = pull_weights(
        REPO, models_dir=models_dir, endpoint=hub.url, free_bytes=PLENTY, chunk_bytes=PIECE
    )

    again = _ranges(hub, "model.safetensors", since=first)
    assert min(a for a, _ in again) == kept  # the prefix is kept, mid-chunk included
    assert sum(b - a for a, b in again) == len(data) - kept
    assert (installed.path / "model.safetensors").read_bytes() == data


def test_when_hf_xet_fails_the_file_comes_over_http_with_exact_progress(
    hub: HubDouble,
    xet_hub: list[dict[str, object]],
    models_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = hub.repos[REPO].files["model.safetensors"]
    fetch = _FakeXetGroup.start_download_file

    def half_then_fail(self: _FakeXetGroup, info: object, path: str) -> None:
        self.files = {Path(path).name: data[: len(data) // 2]}  # reports half the bytes…
        fetch(self, info, path)
        raise RuntimeError("CAS unreachable")  # …then hf_xet gives up

    monkeypatch.setattr(_FakeXetGroup, "start_download_file", half_then_fail)
    reports: list[DownloadProgress] = []

    installed = pull_weights(
        REPO,
        models_dir=models_dir,
        endpoint=hub.url,
        on_progress=reports.append,
        free_bytes=PLENTY,
        chunk_bytes=PIECE,
        clock=lambda: float(len(reports)),
    )

    assert len(xet_hub) == 1
    assert _tiles(_ranges(hub, "model.safetensors"), len(data))
    assert (installed.path / "model.safetensors").read_bytes() == data
    total = sum(len(hub.repos[REPO].files[n]) for n in WANTED)
    assert max(r.bytes_done for r in reports) <= total
    assert reports[-1].bytes_done == total


def test_a_signed_url_that_expires_during_a_long_pull_is_renewed(
    online: None, models_dir: Path
) -> None:
    hub = HubDouble(page_size=3, lfs_redirect=True)
    hub.add_repo(REPO, tiny_model_files())
    data = hub.repos[REPO].files["model.safetensors"]
    with hub.running():
        hub.expire_cdn_urls(after_gets=3)  # a few chunks arrive, then the URL has expired

        installed = pull_weights(
            REPO,
            models_dir=models_dir,
            endpoint=hub.url,
            free_bytes=PLENTY,
            max_workers=1,
            chunk_bytes=PIECE,
        )

        heads = [r for r in hub.requests if r.method == "HEAD" and "model.safetensors" in r.path]
    assert len(heads) == 2  # the preflight HEAD, and one for a new signed URL
    assert (installed.path / "model.safetensors").read_bytes() == data
