"""The profile contract: ready-made profiles, loading rules, IO failures and error text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.errors import BadInputError, ExitCode
from appliance.profile import (
    API_VERSION,
    MAX_PROFILE_BYTES,
    EngineSpec,
    ModelSpec,
    Profile,
    ProfileError,
    ProfileProblem,
    Spec,
    load_profile,
    parse_profile,
)

ROOT = Path(__file__).resolve().parent.parent.parent
PROFILES = ROOT / "profiles"
READY_MADE = sorted(PROFILES.glob("*.yaml"))

MINIMAL = f"""\
apiVersion: {API_VERSION}
kind: Profile
metadata:
  name: test
spec:
  model:
    repo: Qwen/Qwen2.5-7B-Instruct-AWQ
    quantization: awq
"""


def _problems(text: str) -> list[ProfileProblem]:
    with pytest.raises(ProfileError) as caught:
        parse_profile(text, "t.yaml")
    return caught.value.problems


# --- ready-made profiles -------------------------------------------------------------------------


def test_the_required_ready_made_profiles_exist() -> None:
    names = {p.stem for p in READY_MADE}
    assert {
        "rtx4090-chat",
        "2x4090-chat",
        "l40s-rag",
        "a100-80g-70b",
        "h100-70b-fp8",
    } <= names


@pytest.mark.parametrize("path", READY_MADE, ids=[p.stem for p in READY_MADE])
def test_ready_made_profile_is_valid_and_explains_itself(path: Path) -> None:
    profile = load_profile(path)
    assert profile.metadata.name == path.stem
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# yaml-language-server: $schema=./profile.schema.json\n")
    assert "Why these numbers:" in text
    # Secrets are named, never written.
    remote = profile.spec.gateway.fallback.remote
    if remote is not None:
        assert remote.api_key_env or remote.api_key_file


def test_ready_made_profiles_cover_the_promised_setups() -> None:
    by_name = {p.stem: load_profile(p) for p in READY_MADE}
    two = by_name["2x4090-chat"].spec
    assert two.engine.tensor_parallel_size == 2
    assert two.engine.disable_custom_all_reduce
    assert two.gpus == (0, 1)
    h100 = by_name["h100-70b-fp8"].spec
    assert h100.model.quantization == "fp8"
    assert h100.engine.kv_cache_dtype == "fp8"
    l40s = by_name["l40s-rag"].spec
    assert l40s.engine.enable_prefix_caching
    assert l40s.embeddings is not None
    assert l40s.embeddings.repo == "BAAI/bge-m3"
    rtx = by_name["rtx4090-chat"].spec
    assert rtx.engine.gpu_memory_utilization <= 0.9  # room left for TEI on the same card
    assert rtx.model.quantization == "awq"
    assert any(
        p.spec.gateway.fallback.mode == "auto"
        and p.spec.gateway.fallback.remote is not None
        and p.spec.gateway.fallback.remote.api_key_env
        for p in by_name.values()
    )


# --- what a valid profile means ---------------------------------------------------------------


def test_minimal_profile_gets_documented_defaults() -> None:
    profile = parse_profile(MINIMAL, "t.yaml")
    spec = profile.spec
    assert spec.model.revision == "main"
    assert spec.model.served_name == "Qwen2.5-7B-Instruct-AWQ"
    assert spec.engine.gpu_memory_utilization == 0.92  # the pinned vLLM release's default
    assert spec.engine.enable_prefix_caching is True
    assert spec.engine.tensor_parallel_size == 1
    assert spec.gpus == "all"
    assert spec.embeddings is None
    assert not spec.embeddings_enabled
    assert (spec.ports.vllm, spec.ports.tei, spec.ports.gateway) == (8000, 8001, 8080)
    assert spec.gateway.host == "0.0.0.0"
    assert spec.gateway.require_api_key is True
    assert spec.gateway.fallback.mode == "off"
    assert spec.monitoring.alerts.gpu_temperature_c == 80
    assert spec.monitoring.alerts.kv_cache_usage_pct == 90
    assert spec.monitoring.alerts.ttft_p95_seconds == 2.0
    assert spec.storage.models_dir == Path("/var/lib/llm-appliance/models")
    assert spec.keys_file == Path("/var/lib/llm-appliance/state/gateway/keys.json")
    assert spec.admin_key_file == Path("/var/lib/llm-appliance/state/gateway/admin.key")
    assert spec.served_names == ("Qwen2.5-7B-Instruct-AWQ",)


def test_yaml_1_1_words_are_text_so_mode_off_needs_no_quotes() -> None:
    text = MINIMAL + "  gateway:\n    fallback:\n      mode: off\n"
    assert parse_profile(text, "t.yaml").spec.gateway.fallback.mode == "off"


def test_served_names_cover_adapters_and_embeddings() -> None:
    text = (
        MINIMAL
        + "    served_model_name: chat\n"
        + "    lora_adapters:\n      - name: support\n        repo: my-org/support-lora\n"
        + "  engine:\n    max_lora_rank: 16\n"
        + "  embeddings:\n    repo: BAAI/bge-m3\n"
    )
    spec = parse_profile(text, "t.yaml").spec
    assert spec.served_names == ("chat", "support", "bge-m3")
    assert spec.embeddings_enabled


def test_embeddings_can_be_switched_off_without_deleting_them() -> None:
    text = MINIMAL + "  embeddings:\n    enabled: false\n"
    spec = parse_profile(text, "t.yaml").spec
    assert spec.embeddings is not None
    assert not spec.embeddings_enabled
    assert spec.served_names == ("Qwen2.5-7B-Instruct-AWQ",)


def test_gpu_uuids_and_full_commit_revisions_are_accepted() -> None:
    commit = "a" * 39 + "1"
    uuid = "GPU-5f2d3c1a-1b2c-4d5e-8f90-0123456789ab"
    text = MINIMAL + f"    revision: {commit}\n  gpus: [{uuid}]\n"
    spec = parse_profile(text, "t.yaml").spec
    assert spec.model.revision == commit
    assert spec.gpus == (uuid,)


def test_admin_key_from_env_means_no_admin_key_file() -> None:
    text = MINIMAL + "  gateway:\n    admin_key_env: APPLIANCE_ADMIN_KEY\n"
    assert parse_profile(text, "t.yaml").spec.admin_key_file is None


def test_profile_built_in_code_is_checked_by_the_same_rules() -> None:
    spec = Spec(
        model=ModelSpec(repo="Qwen/Qwen2.5-7B-Instruct-AWQ", quantization="awq"),
        engine=EngineSpec(max_model_len=8192),
    )
    profile = Profile.from_spec("built", spec, description="from code")
    assert profile.api_version == API_VERSION
    assert profile.spec.engine.max_model_len == 8192
    with pytest.raises(ValueError, match="power of two"):
        EngineSpec(tensor_parallel_size=3)


def test_profile_is_immutable() -> None:
    profile = parse_profile(MINIMAL, "t.yaml")
    with pytest.raises(ValueError, match="frozen"):
        profile.spec.engine.max_num_seqs = 4  # type: ignore[misc]


# --- every problem, located ---------------------------------------------------------------------


def test_all_problems_are_reported_not_only_the_first() -> None:
    text = (
        MINIMAL
        + "  engine:\n"
        + "    gpu_memory_utilization: 1.5\n"  # line 10
        + "    max_num_seq: 8\n"  # line 11
        + "  ports:\n    gateway: 0\n"  # line 13
    )
    problems = _problems(text)
    located = {(p.line, p.field) for p in problems}
    assert located == {
        (10, "spec.engine.gpu_memory_utilization"),
        (11, "spec.engine.max_num_seq"),
        (13, "spec.ports.gateway"),
    }


def test_render_lists_every_problem_with_its_hint() -> None:
    text = MINIMAL + "  engine:\n    gpu_memory_utilization: 1.5\n    max_num_seq: 8\n"
    with pytest.raises(ProfileError) as caught:
        parse_profile(text, "profiles/x.yaml")
    rendered = caught.value.render()
    assert rendered.splitlines() == [
        "profiles/x.yaml:10: spec.engine.gpu_memory_utilization: 1.5 — must be > 0 and ≤ 0.98",
        rendered.splitlines()[1],
        "profiles/x.yaml:11: spec.engine.max_num_seq: unknown key",
        "  → did you mean max_num_seqs?",
        "profiles/x.yaml: 2 problems",
    ]
    assert rendered.splitlines()[1].startswith("  → write e.g. gpu_memory_utilization: 0.9")


def test_profile_error_is_bad_input_with_exit_code_2() -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile("", "t.yaml")
    assert isinstance(caught.value, BadInputError)
    assert caught.value.exit_code == ExitCode.BAD_INPUT
    assert int(caught.value.exit_code) == 2
    assert caught.value.message.startswith("t.yaml: empty file")


def test_a_secret_is_reported_but_never_echoed() -> None:
    token = "sk-proj-Xb7kq2LmN9pQrS4tUvW8yZa1"
    text = (
        MINIMAL
        + "  gateway:\n    fallback:\n      mode: auto\n      remote:\n"
        + "        base_url: https://api.openai.com/v1\n"
        + f"        api_key: {token}\n"
        + "        api_key_env: 'OPENAI_API_KEY'\n"
    )
    with pytest.raises(ProfileError) as caught:
        parse_profile(text, "t.yaml")
    rendered = caught.value.render()
    assert token not in rendered
    assert token not in str(caught.value)
    (problem,) = caught.value.problems  # the secret only: no extra "unknown key" noise
    assert problem.field == "spec.gateway.fallback.remote.api_key"
    assert problem.line == 14
    assert "api_key_env" in (problem.hint or "")


def test_key_names_that_merely_contain_token_are_not_secrets() -> None:
    text = MINIMAL + "  engine:\n    max_num_batched_tokens: 8192\n"
    assert parse_profile(text, "t.yaml").spec.engine.max_num_batched_tokens == 8192


def test_missing_field_points_at_its_parent_section() -> None:
    problems = _problems(MINIMAL.replace("    quantization: awq\n", ""))
    (problem,) = problems
    assert (problem.line, problem.field) == (6, "spec.model.quantization")
    assert problem.hint == "add quantization: awq under spec.model"


@pytest.mark.parametrize(
    ("depth", "fragment"),
    [(100, "nested more than 64 levels"), (200_000, "nested too deep")],
)
def test_deep_nesting_is_an_error_not_a_crash(depth: int, fragment: str) -> None:
    text = MINIMAL + "  extra: " + "[" * depth + "]" * depth + "\n"
    problems = _problems(text)
    assert any(fragment in p.message for p in problems)


def test_oversized_text_is_refused_before_parsing() -> None:
    text = MINIMAL + "#" * MAX_PROFILE_BYTES
    (problem,) = _problems(text)
    assert "larger than 1024 KiB" in problem.message


# --- files ----------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as caught:
        load_profile(tmp_path / "nope.yaml")
    assert caught.value.render().startswith(f"{tmp_path / 'nope.yaml'}: no such file")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="is a directory"):
        load_profile(tmp_path)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, where chmod 000 does not stop reading: simulate the kernel's answer.
    path = tmp_path / "p.yaml"
    path.write_text(MINIMAL, encoding="utf-8")

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ProfileError, match="permission denied"):
        load_profile(path)


def test_file_over_one_mebibyte_is_refused_by_size(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(MINIMAL + "#" * MAX_PROFILE_BYTES, encoding="utf-8")
    with pytest.raises(ProfileError, match="larger than 1024 KiB"):
        load_profile(path)


def test_endless_file_is_not_read_to_the_end() -> None:
    # /dev/zero reports size 0 and never ends: the read is bounded anyway.
    with pytest.raises(ProfileError, match="larger than 1024 KiB"):
        load_profile(Path("/dev/zero"))


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_profile(path).metadata.name == "test"


def test_importing_the_profile_module_stays_light() -> None:
    code = (
        "import sys, appliance.profile\n"
        "heavy = {'docker', 'pynvml', 'huggingface_hub', 'httpx', 'textual', 'rich'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"


def test_unknown_key_inside_a_list_item_gets_a_suggestion() -> None:
    text = (
        MINIMAL
        + "    lora_adapters:\n      - name: support\n        repository: my-org/lora\n"
        + "  engine:\n    max_lora_rank: 16\n"
    )
    problems = {(p.line, p.field): p for p in _problems(text)}
    assert problems[(11, "spec.model.lora_adapters[0].repository")].hint == "did you mean repo?"
    missing = problems[(10, "spec.model.lora_adapters[0].repo")]
    assert missing.message == "required, but missing"


def test_quantization_names_match_the_catalog() -> None:
    # Sizing looks variants up by the profile's quantization: one word, one definition.
    import appliance.catalog
    import appliance.profile.schema
    import appliance.sizing
    from appliance.vocabulary import Quantization

    assert appliance.profile.schema.Quantization is Quantization
    assert appliance.catalog.Quantization is Quantization
    assert appliance.sizing.Quantization is Quantization
