"""Server mode on a real vLLM OpenAI server we start: runtime LoRA loading, processed logprobs equal the
learner's, the loop over HTTP, a killed server restarted (not a hang); prompts balanced over servers."""

import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from inference.server_sampler import ServerError, ServerSampler
from inference.types import SamplingParams
from inference.vllm_server import VLLMServer, free_port
from trainer.datums import rollout_datum
from trainer.learner import LoRALearner, LoraSpec
from trainer.config import compose
from trainer.loop import run


@pytest.fixture(scope="module")
def server_sampler(tiny_model_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "vllm_server.log"
    server = VLLMServer(tiny_model_path, log_path=log, max_lora_rank=8).start()
    sampler = ServerSampler(tiny_model_path, servers=[server], max_model_len=512, timeout=120)
    yield sampler
    sampler.close()


def _prompt(sampler):
    return list(sampler.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": "Write 12 digits."}], add_generation_prompt=True, tokenize=True,
        return_dict=False))


@pytest.mark.vllm
def test_runtime_lora_loading_and_logprobs_equal_learner(server_sampler, tiny_model_path, tmp_path):
    learner = LoRALearner(tiny_model_path, LoraSpec(rank=8, seed=1))
    with torch.no_grad():
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    learner.save_adapter(str(tmp_path / "a"))
    prompt = _prompt(server_sampler)
    params = SamplingParams(max_tokens=12, seed=4)
    base = server_sampler.sample([prompt], 2, params, version=None)[0]
    server_sampler.load_adapter(5, str(tmp_path / "a"))
    tuned = server_sampler.sample([prompt], 2, params)[0]
    assert [s.tokens for s in tuned] != [s.tokens for s in base]
    assert all(s.adapter_version == 5 for s in tuned) and all(s.adapter_version is None for s in base)
    for seq in tuned:
        out = learner.forward_backward([rollout_datum(prompt, seq.tokens, seq.logprobs, 0.0)],
                                       "importance_sampling", forward_only=True)
        ours = out["loss_fn_outputs"][0]["logprobs"][len(prompt) - 1:]
        assert (ours - torch.tensor(seq.logprobs)).abs().max() < 1e-4
    scored = server_sampler.compute_logprobs(prompt + tuned[0].tokens)
    assert scored[0] is None and len(scored) == len(prompt) + len(tuned[0].tokens)


@pytest.mark.vllm
def test_loop_over_http(server_sampler, tmp_path):
    cfg = compose(["+experiment=demo", f"out={tmp_path}", "steps=2", "groups=2", "group_size=4", "max_tokens=8",
                   "sampler=server", "wandb_mode=disabled"])
    records = run(cfg, sampler=server_sampler, log=lambda *_: None)
    assert [r["adapter_version"] for r in records] == [1, 2]
    assert all(r["mismatch_max"] < 1e-4 and r["probe_mismatch"] < 1e-4 for r in records)


@pytest.mark.vllm
def test_a_killed_server_is_restarted_with_the_current_adapter(server_sampler, capsys):
    server = server_sampler.servers[0]
    version = server_sampler.version
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    seqs = server_sampler.sample([_prompt(server_sampler)], 2, SamplingParams(max_tokens=6, seed=1))[0]
    assert server.restarts == 1 and server.alive()
    assert [s.adapter_version for s in seqs] == [version, version]
    assert "failed (ConnectionError" in capsys.readouterr().out


def test_a_dead_server_we_do_not_own_is_a_clear_error(tiny_model_path):
    sampler = ServerSampler(tiny_model_path, urls=[f"http://127.0.0.1:{free_port()}"], timeout=5)
    with pytest.raises(ServerError, match="not ours to restart"):
        sampler.sample([[1, 2, 3]], 1, SamplingParams(max_tokens=2))


class _FakeVLLM(BaseHTTPRequestHandler):
    """Answers /v1/completions like vLLM does and counts the prompts it got."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.prompts.append(body["prompt"])
        choices = [{"index": i, "text": "7", "finish_reason": "length",
                    "logprobs": {"tokens": ["token_id:7"], "token_logprobs": [-0.5]}} for i in range(body["n"])]
        payload = json.dumps({"choices": choices}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_prompts_are_balanced_over_servers(tiny_model_path):
    fakes = []
    for _ in range(2):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FakeVLLM)
        httpd.prompts = []
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        fakes.append(httpd)
    try:
        urls = [f"http://127.0.0.1:{f.server_address[1]}" for f in fakes]
        sampler = ServerSampler(tiny_model_path, urls=urls, timeout=10)
        groups = sampler.sample([[i] for i in range(6)], 3, SamplingParams(max_tokens=1), version=None)
        assert [len(g) for g in groups] == [3] * 6 and groups[0][0].tokens == [7]
        assert sorted(p[0] for p in fakes[0].prompts) == [0, 2, 4]
        assert sorted(p[0] for p in fakes[1].prompts) == [1, 3, 5]
    finally:
        for f in fakes:
            f.shutdown()
