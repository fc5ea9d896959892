"""Weights without a Hub: token sources, air-gapped import, listing, removal, the on-disk layout,
progress arithmetic, and the import boundary. The Hub paths are in
tests/integration/test_weights_hub.py."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from appliance.errors import BadInputError, RefusedError
from appliance.profile import Profile, parse_profile
from appliance.weights import (
    DownloadProgress,
    find_installed,
    import_weights,
    list_weights,
    parse_repo_ref,
    profile_weights,
    remove_weights,
    resolve_token,
    revision_dir,
    snapshot_dir,
)
from appliance.weights.hub import _select
from appliance.weights.progress import _Progress
from tests.support.hub_double import tiny_model_files

REPO = "tiny-org/tiny-model"
KEPT = {
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
}
PLENTY = lambda _path: 1 << 50  # noqa: E731 - free-space probe that never runs short
SHA = "0123456789abcdef0123456789abcdef01234567"


def _profile(name: str = "tiny", repo: str = REPO, revision: str = "main") -> Profile:
    text = f"""
apiVersion: llm-appliance/v1
kind: Profile
metadata:
  name: {name}
spec:
  model:
    repo: {repo}
    revision: {revision}
    quantization: bf16
    lora_adapters:
      - name: support
        repo: tiny-org/support-lora
  engine:
    max_lora_rank: 16
  embeddings:
    repo: BAAI/bge-m3
"""
    return parse_profile(text, f"{name}.yaml")


def _model_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in tiny_model_files(weight_bytes=64 * 1024).items():
        (root / name).write_bytes(data)
    return root


# --- token --------------------------------------------------------------------------------------


def test_token_file_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    token_file = tmp_path / "hf-token"
    token_file.write_text("hf_abcdef\n")
    token_file.chmod(0o644)

    with pytest.raises(RefusedError) as refused:
        resolve_token(token_file, environ={})

    assert "can be read by other users (mode 644)" in refused.value.message
    assert refused.value.hint == f"make it private: chmod 600 {token_file}"
    assert "hf_abcdef" not in refused.value.render()


def test_private_token_file_wins_over_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "hf-token"
    token_file.write_text("hf_fromfile\n")
    token_file.chmod(0o600)

    token = resolve_token(token_file, environ={"HF_TOKEN": "hf_fromenv"})

    assert token is not None
    assert token.value == "hf_fromfile"
    assert token.source == f"token file {token_file}"
    assert "hf_fromfile" not in repr(token)
    assert "hf_fromfile" not in str(token)


def test_token_from_the_environment(tmp_path: Path) -> None:
    token = resolve_token(environ={"HF_TOKEN": " hf_fromenv \n"})
    assert token is not None
    assert (token.value, token.source) == ("hf_fromenv", "HF_TOKEN")


@pytest.mark.parametrize(("content", "message"), [(None, "does not exist"), ("  \n", "is empty")])
def test_unusable_token_file_is_bad_input(
    tmp_path: Path, content: str | None, message: str
) -> None:
    token_file = tmp_path / "hf-token"
    if content is not None:
        token_file.write_text(content)
        token_file.chmod(0o600)
    with pytest.raises(BadInputError, match=message):
        resolve_token(token_file, environ={})


def test_no_token_anywhere_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub_constants  # noqa: TID251 - test setup

    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "none"))
    monkeypatch.setattr(hub_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "none2"))
    assert resolve_token(environ={}) is None


# --- selection and profiles ---------------------------------------------------------------------


def test_only_engine_files_are_selected() -> None:
    listed = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "chat_template.jinja",
        "vocab.txt",
        "merges.txt",
        "sentencepiece.bpe.model",
        "1_Pooling/config.json",
        "modules.json",
        "adapter_model.safetensors",
        "adapter_config.json",
        "pytorch_model.bin",
        "training_args.bin",
        "colbert_linear.pt",
        "onnx/model.onnx",
        "onnx/config.json",
        "README.md",
        ".gitattributes",
        "model.gguf",
    ]
    assert _select(listed) == listed[:17]


def test_profile_weights_lists_model_adapters_and_embeddings() -> None:
    refs = profile_weights(_profile())
    assert [(r.repo, r.revision, r.role) for r in refs] == [
        (REPO, "main", "model"),
        ("tiny-org/support-lora", "main", "lora"),
        ("BAAI/bge-m3", "main", "embeddings"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("org/name", ("org/name", None)), ("org/name@v1.0", ("org/name", "v1.0"))],
)
def test_parse_repo_ref(text: str, expected: tuple[str, str | None]) -> None:
    assert parse_repo_ref(text) == expected


@pytest.mark.parametrize("text", ["name-only", "org/name@", "/abs/path", "org/name@..", "a/b/c"])
def test_parse_repo_ref_rejects(text: str) -> None:
    with pytest.raises(BadInputError):
        parse_repo_ref(text)


# --- layout -------------------------------------------------------------------------------------


def test_layout_agrees_with_the_runtime_mount_path(tmp_path: Path) -> None:
    from appliance.vocabulary import weights_path

    assert snapshot_dir(tmp_path, REPO, SHA) == weights_path(tmp_path, REPO, SHA)
    for revision in ("main", "refs/pr/1", "v1.0"):
        assert revision_dir(tmp_path, REPO, revision) == weights_path(tmp_path, REPO, revision)


def test_bookkeeping_names_are_not_revisions(tmp_path: Path) -> None:
    for revision in ("refs", "manifests", ".partial"):
        with pytest.raises(BadInputError):
            revision_dir(tmp_path, REPO, revision)


# --- import -------------------------------------------------------------------------------------


def test_import_from_a_directory_keeps_engine_files_and_names_it(tmp_path: Path) -> None:
    source = _model_dir(tmp_path / "src")
    models = tmp_path / "models"
    reports: list[DownloadProgress] = []

    installed = import_weights(
        source, REPO, models_dir=models, free_bytes=PLENTY, on_progress=reports.append
    )

    assert installed.source == "import"
    assert installed.revision == "main"
    assert len(installed.sha) == 40
    on_disk = {p.name for p in installed.path.iterdir()}
    assert on_disk == KEPT
    assert revision_dir(models, REPO, "main").resolve() == installed.path.resolve()
    assert find_installed(models, REPO, "main") == installed
    for f in installed.files:
        assert hashlib.sha256((source / f.path).read_bytes()).hexdigest() == f.sha256
    assert source.joinpath("model.safetensors").exists()  # a directory import copies
    assert reports[-1].phase == "done"
    assert reports[-1].bytes_done == reports[-1].bytes_total == installed.size_bytes
    manifest = json.loads((models / REPO / "manifests" / f"{installed.sha}.json").read_text())
    assert manifest["sha_is_commit"] is False
    assert manifest["imported_from"] == str(source.resolve())
    assert not (models / REPO / ".partial").exists()


def test_import_names_the_snapshot_by_a_given_commit(tmp_path: Path) -> None:
    source = _model_dir(tmp_path / "src")
    installed = import_weights(source, REPO, SHA, models_dir=tmp_path / "m", free_bytes=PLENTY)
    assert installed.sha == SHA
    assert installed.path == snapshot_dir(tmp_path / "m", REPO, SHA)
    assert find_installed(tmp_path / "m", REPO, SHA) is not None


def test_import_from_a_hub_cache_snapshot_keeps_its_commit(tmp_path: Path) -> None:
    """A `~/.cache/huggingface/hub` snapshot: files are symlinks into ../../blobs."""
    cache = tmp_path / "models--tiny-org--tiny-model"
    blobs = _model_dir(cache / "blobs")
    snapshot = cache / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    for blob in blobs.iterdir():
        (snapshot / blob.name).symlink_to(Path("../../blobs") / blob.name)

    installed = import_weights(snapshot, REPO, models_dir=tmp_path / "m", free_bytes=PLENTY)

    assert installed.sha == SHA
    assert all(not p.is_symlink() for p in installed.path.iterdir())


def test_import_from_a_tarball_with_a_top_directory(tmp_path: Path) -> None:
    source = _model_dir(tmp_path / "src" / "tiny-model")
    tarball = tmp_path / "tiny.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(source, arcname="tiny-model")

    installed = import_weights(tarball, REPO, "v1", models_dir=tmp_path / "m", free_bytes=PLENTY)

    assert {p.name for p in installed.path.iterdir()} == KEPT
    assert (tmp_path / "m" / REPO / "refs" / "v1").read_text().strip() == installed.sha
    assert find_installed(tmp_path / "m", REPO, "v1") is not None
    assert tarball.exists()


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    tarball = tmp_path / "evil.tar"
    with tarfile.open(tarball, "w") as archive:
        good = tarfile.TarInfo("model.safetensors")
        payload = tiny_model_files(weight_bytes=1024)["model.safetensors"]
        good.size = len(payload)
        archive.addfile(good, io.BytesIO(payload))
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data) if data else None)
    return tarball


@pytest.mark.parametrize(
    ("name", "kind", "target"),
    [
        ("../outside.json", tarfile.REGTYPE, ""),
        ("/etc/evil.json", tarfile.REGTYPE, ""),
        ("config.json", tarfile.SYMTYPE, "/etc/passwd"),
        ("tokenizer.json", tarfile.LNKTYPE, "../../etc/passwd"),
    ],
)
def test_unsafe_tarballs_are_refused_and_leave_nothing(
    tmp_path: Path, name: str, kind: bytes, target: str
) -> None:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = target
    tarball = _tar_with(tmp_path, member, b"{}" if kind == tarfile.REGTYPE else b"")
    models = tmp_path / "m"

    with pytest.raises(RefusedError, match=r"outside the import directory|a link or a device"):
        import_weights(tarball, REPO, models_dir=models, free_bytes=PLENTY)

    assert not (tmp_path / "outside.json").exists()
    assert list_weights(models) == []
    leftovers = [p for p in (models / REPO).rglob("*") if p.name != ".lock"]
    assert leftovers == []


def test_import_without_safetensors_is_bad_input(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "config.json").write_text("{}")
    (source / "pytorch_model.bin").write_bytes(b"\0" * 10)
    with pytest.raises(BadInputError, match=r"no \.safetensors"):
        import_weights(source, REPO, models_dir=tmp_path / "m", free_bytes=PLENTY)


def test_import_of_something_else_is_bad_input(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(BadInputError, match="neither a directory nor a tarball"):
        import_weights(junk, REPO, models_dir=tmp_path / "m", free_bytes=PLENTY)
    with pytest.raises(BadInputError, match="does not exist"):
        import_weights(tmp_path / "nope", REPO, models_dir=tmp_path / "m", free_bytes=PLENTY)


def test_import_checks_free_disk(tmp_path: Path) -> None:
    from appliance.errors import EnvironmentNotReadyError

    source = _model_dir(tmp_path / "src")
    with pytest.raises(EnvironmentNotReadyError, match="not enough free disk"):
        import_weights(source, REPO, models_dir=tmp_path / "m", free_bytes=lambda _p: 1)
    assert list_weights(tmp_path / "m") == []


def test_cancelled_import_leaves_nothing(tmp_path: Path) -> None:
    from appliance.weights import DownloadCancelledError

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DownloadCancelledError):
        import_weights(
            _model_dir(tmp_path / "src"),
            REPO,
            models_dir=tmp_path / "m",
            cancel=cancel,
            free_bytes=PLENTY,
        )
    assert list_weights(tmp_path / "m") == []


# --- list and remove ----------------------------------------------------------------------------


def test_list_shows_which_profiles_use_what(tmp_path: Path) -> None:
    models = tmp_path / "m"
    tiny = import_weights(_model_dir(tmp_path / "a"), REPO, models_dir=models, free_bytes=PLENTY)
    other = import_weights(
        _model_dir(tmp_path / "b"), "other/model", SHA, models_dir=models, free_bytes=PLENTY
    )

    listed = list_weights(
        models,
        profiles=[
            _profile("uses-main"),
            _profile("pins-sha", "other/model", SHA),
            _profile("x", "other/model"),
        ],
    )

    by_repo = {w.repo: w for w in listed}
    assert by_repo[REPO].used_by == ("uses-main",)
    assert by_repo[REPO].revisions == ("main", tiny.sha)
    assert by_repo["other/model"].used_by == ("pins-sha",)  # "x" wants main, which is not here
    assert by_repo["other/model"].revisions == (other.sha,)
    document = json.loads(json.dumps([w.to_json() for w in listed]))
    assert {d["repo"] for d in document} == {REPO, "other/model"}
    assert all(d["size_bytes"] > 0 and len(d["sha"]) == 40 for d in document)


def test_list_skips_incomplete_snapshots(tmp_path: Path) -> None:
    models = tmp_path / "m"
    installed = import_weights(
        _model_dir(tmp_path / "a"), REPO, models_dir=models, free_bytes=PLENTY
    )
    (installed.path / "model.safetensors").unlink()
    assert find_installed(models, REPO, "main") is None
    (models / REPO / "manifests" / f"{installed.sha}.json").unlink()
    assert list_weights(models) == []
    assert list_weights(tmp_path / "never-created") == []


def test_remove(tmp_path: Path) -> None:
    models = tmp_path / "m"
    import_weights(_model_dir(tmp_path / "a"), REPO, models_dir=models, free_bytes=PLENTY)

    with pytest.raises(RefusedError, match="used by profile tiny"):
        remove_weights(models, REPO, in_use=[_profile()])
    removed = remove_weights(models, REPO)

    assert [w.repo for w in removed] == [REPO]
    assert not (models / "tiny-org").exists()
    assert list_weights(models) == []
    with pytest.raises(BadInputError, match="no weights of"):
        remove_weights(models, REPO)


# --- progress -----------------------------------------------------------------------------------


def test_progress_reports_rate_and_eta_from_the_clock() -> None:
    now = [0.0]
    reports: list[DownloadProgress] = []
    progress = _Progress(
        REPO,
        SHA,
        files_total=2,
        bytes_total=1000,
        bytes_initial=100,  # resumed: already on disk
        callback=reports.append,
        clock=lambda: now[0],
        stop=threading.Event(),
        cancel=None,
    )
    progress.add(100, "a")
    now[0] = 1.0
    progress.add(200, "a")
    now[0] = 1.05  # within 0.1 s: coalesced, no report
    progress.add(100, "a")
    now[0] = 2.0
    progress.add(100, "a")

    assert [r.bytes_done for r in reports] == [200, 400, 600]
    assert reports[0].rate_bytes_per_second is None
    assert reports[1].rate_bytes_per_second == pytest.approx(200.0)
    assert reports[2].rate_bytes_per_second == pytest.approx(200.0)  # 400 B over 2 s
    assert reports[2].eta_seconds == pytest.approx(400 / 200.0)
    assert reports[2].fraction == pytest.approx(0.6)


# --- import boundary ----------------------------------------------------------------------------


def test_importing_weights_does_not_load_huggingface_hub() -> None:
    code = "import sys, appliance.weights; print('huggingface_hub' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_tarball_import_checks_the_unpacked_size_against_the_disk(tmp_path: Path) -> None:
    from appliance.errors import EnvironmentNotReadyError

    source = _model_dir(tmp_path / "src")
    tarball = tmp_path / "tiny.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(source, arcname=".")
    unpacked = sum(p.stat().st_size for p in source.iterdir())
    asked: list[Path] = []

    def disk(path: Path) -> int:
        asked.append(path)
        return unpacked - 1

    with pytest.raises(EnvironmentNotReadyError, match="not enough free disk"):
        import_weights(tarball, REPO, models_dir=tmp_path / "m", free_bytes=disk, margin_bytes=0)
    assert asked == [tmp_path / "m"]
    assert list_weights(tmp_path / "m") == []


# --- hardening (#13 items 10, 12, 13) -----------------------------------------------------------


def _leftovers(models: Path) -> list[str]:
    """Everything an import left under `models` apart from the lock files."""
    if not models.exists():
        return []
    return sorted(
        p.relative_to(models).as_posix()
        for p in models.rglob("*")
        if ".locks" not in p.relative_to(models).parts
    )


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_directory_import_refuses_links_and_copies_nothing_they_point_to(
    tmp_path: Path, kind: str
) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "vocab.txt").write_text("root:$6$hash")
    source = _model_dir(tmp_path / "src")
    if kind == "file":
        (source / "vocab.txt").symlink_to(secret / "vocab.txt")
        named = "vocab.txt"
    else:
        (source / "extra").symlink_to(secret)
        named = "extra"
    models = tmp_path / "m"

    with pytest.raises(RefusedError, match=f"{named}.*link") as refused:
        import_weights(source, REPO, models_dir=models, free_bytes=PLENTY)

    assert str(secret) in refused.value.message  # where it points, so the admin can judge
    assert list_weights(models) == []
    assert _leftovers(models) == []
    assert not any(
        "root:" in p.read_text(errors="ignore") for p in models.rglob("*") if p.is_file()
    )


def test_a_link_deep_in_the_tree_is_refused(tmp_path: Path) -> None:
    source = _model_dir(tmp_path / "src")
    (source / "1_Pooling").mkdir()
    (source / "1_Pooling" / "config.json").symlink_to("/proc/self/environ")
    with pytest.raises(RefusedError, match=r"1_Pooling/config\.json.*link"):
        import_weights(source, REPO, models_dir=tmp_path / "m", free_bytes=PLENTY)


def test_a_hub_cache_link_out_of_its_blobs_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "models--tiny-org--tiny-model"
    blobs = _model_dir(cache / "blobs")
    snapshot = cache / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    for blob in blobs.iterdir():
        (snapshot / blob.name).symlink_to(Path("../../blobs") / blob.name)
    (snapshot / "vocab.txt").symlink_to("/etc/hostname")
    with pytest.raises(RefusedError, match=r"vocab\.txt.*link"):
        import_weights(snapshot, REPO, models_dir=tmp_path / "m", free_bytes=PLENTY)


def _header(tensors: dict[str, object]) -> bytes:
    encoded = json.dumps(tensors).encode()
    return len(encoded).to_bytes(8, "little") + encoded


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\x14" + b"\0" * 19, "header"),  # 20 bytes: a header of 20 bytes does not fit
        (b"this is not safetensors at all, just text\n", "header"),
        ((2**40).to_bytes(8, "little") + b"{}", "header"),
        (_header([1, 2]), "JSON object"),  # type: ignore[arg-type]
        (b"\x05\0\0\0\0\0\0\0{oops", "JSON"),
        (_header({"w": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}) + b"\0" * 8, "Q7"),
        (_header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}) + b"\0" * 4, "w"),
        (_header({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}) + b"\0" * 8, "w"),
        (_header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}) + b"\0" * 12, "w"),
    ],
)
def test_broken_safetensors_are_refused_naming_the_file(
    tmp_path: Path, payload: bytes, why: str
) -> None:
    source = _model_dir(tmp_path / "src")
    (source / "model.safetensors").write_bytes(payload)
    models = tmp_path / "m"
    with pytest.raises(BadInputError, match=r"model\.safetensors") as refused:
        import_weights(source, REPO, models_dir=models, free_bytes=PLENTY)
    assert why in refused.value.message
    assert list_weights(models) == []
    assert _leftovers(models) == []


def test_valid_safetensors_of_every_width_pass(tmp_path: Path) -> None:
    from appliance.weights import check_safetensors

    tensors = {
        "a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
        "b": {"dtype": "F4", "shape": [4], "data_offsets": [12, 14]},
        "c": {"dtype": "U8", "shape": [], "data_offsets": [14, 15]},
        "__metadata__": {"format": "pt"},
    }
    path = tmp_path / "x.safetensors"
    path.write_bytes(_header(tensors) + b"\0" * 15)
    check_safetensors(path)


def test_import_needs_a_config(tmp_path: Path) -> None:
    source = _model_dir(tmp_path / "src")
    (source / "config.json").unlink()
    models = tmp_path / "m"
    with pytest.raises(BadInputError, match=r"config\.json"):
        import_weights(source, REPO, models_dir=models, free_bytes=PLENTY)
    assert _leftovers(models) == []
    # A LoRA adapter has adapter_config.json instead.
    (source / "adapter_config.json").write_text('{"r": 8}')
    assert import_weights(source, REPO, models_dir=models, free_bytes=PLENTY).files


def test_refused_imports_leave_no_empty_repo_directories(tmp_path: Path) -> None:
    models = tmp_path / "m"
    models.mkdir()
    source = tmp_path / "src"
    source.mkdir()
    (source / "config.json").write_text("{}")  # no safetensors
    with pytest.raises(BadInputError):
        import_weights(source, REPO, models_dir=models, free_bytes=PLENTY)
    with pytest.raises(BadInputError):
        import_weights(tmp_path / "nope", REPO, models_dir=models, free_bytes=PLENTY)
    assert _leftovers(models) == []


@pytest.mark.parametrize("revision", ["r" * 300, "a b", "x..y", "v1~2", "main.lock", "a//b"])
def test_revisions_git_would_not_accept_are_refused_up_front(tmp_path: Path, revision: str) -> None:
    models = tmp_path / "m"
    with pytest.raises(BadInputError, match="revision"):
        import_weights(_model_dir(tmp_path / "src"), REPO, revision, models_dir=models)
    with pytest.raises(BadInputError, match="revision"):
        parse_repo_ref(f"{REPO}@{revision}")
    assert list_weights(models) == []
    assert _leftovers(models) == []


def test_an_import_that_fails_at_its_last_step_is_never_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.weights import importer

    def fail(*_args: object) -> None:
        raise OSError(36, "File name too long")

    monkeypatch.setattr(importer, "_point_revision", fail)
    models = tmp_path / "m"
    with pytest.raises(OSError, match="too long"):
        import_weights(_model_dir(tmp_path / "src"), REPO, "v1", models_dir=models)
    assert list_weights(models) == []
    assert _leftovers(models) == []


def test_an_unreadable_file_or_directory_is_raised_not_skipped(tmp_path: Path) -> None:
    """The CLI turns the OSError into one line (`cli.weights._import_error`); nothing is skipped
    silently and nothing is left behind."""
    import errno
    import os
    import shutil
    import tempfile

    # root reads everything: the import runs as nobody, in a tree it may enter.
    code = (
        "import os, sys; from pathlib import Path\n"
        "from appliance.weights import import_weights, list_weights\n"
        "if os.geteuid() == 0: os.setgid(65534); os.setuid(65534)\n"
        "try: import_weights(Path(sys.argv[1]), 'x/y', models_dir=Path(sys.argv[2]))\n"
        "except OSError as e:\n"
        "    print(e.errno, Path(e.filename).name, list_weights(Path(sys.argv[2])))\n"
    )
    root = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        root.chmod(0o755)
        for kind in ("file", "dir"):
            source = _model_dir(root / kind / "src")
            secret = source / "tokenizer.json" if kind == "file" else source / "1_Pooling"
            if kind == "dir":
                secret.mkdir()
                (secret / "config.json").write_text("{}")
            secret.chmod(0)
            models = root / kind / "m"
            models.mkdir()
            if os.geteuid() == 0:
                os.chown(models, 65534, 65534)
            (root / kind).chmod(0o755)
            out = subprocess.run(
                [sys.executable, "-c", code, str(source), str(models)],
                capture_output=True,
                text=True,
                check=False,
            )
            assert out.stdout.split() == [str(errno.EACCES), secret.name, "[]"], out
            assert _leftovers(models) == []
    finally:
        shutil.rmtree(root)


def test_a_disk_that_fills_up_during_a_directory_import_leaves_nothing(tmp_path: Path) -> None:
    import errno

    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        source = _model_dir(tmp_path / "src")  # 64 KiB of weights and the rest: more than fits
        with pytest.raises(OSError, match="No space left") as full:
            import_weights(source, REPO, models_dir=mount / "models", free_bytes=PLENTY)
        assert full.value.errno == errno.ENOSPC  # the CLI says "the disk … filled up"
        assert list_weights(mount / "models") == []
        assert _leftovers(mount / "models") == []
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
