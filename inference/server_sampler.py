"""The sampler interface over one or more vLLM OpenAI-compatible servers (data parallel).

Adapters are loaded at run time on every server under versioned names (`v<version>`), so requests in flight
finish on the policy they started with; the previous version is unloaded once the new one is everywhere.
Prompts are spread round-robin over the servers. A server we own that dies is restarted (and given the
current adapter again) once per request; one we don't own gives a clear error. Every request has a timeout.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Sequence

import requests

from inference.types import SampledSequence, SamplingParams
from inference.vllm_server import VLLMServer


class ServerError(RuntimeError):
    pass


class ServerSampler:
    def __init__(self, model_path: str, *, urls: Sequence[str] = (), servers: Sequence[VLLMServer] = (),
                 timeout: float = 600.0, max_model_len: int | None = None, **_ignored):
        if not urls and not servers:
            raise ValueError("ServerSampler needs server urls or VLLMServer objects")
        self.model_path, self.timeout, self.max_model_len = model_path, timeout, max_model_len
        self.servers = list(servers)
        self.urls = list(urls) + [s.url for s in self.servers]
        self._owner = {s.url: s for s in self.servers}
        self.version: int | None = None
        self._adapter_path: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=32)
        self._tokenizer = None

    def get_tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        return self._tokenizer

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for server in self.servers:
            server.stop()

    # -- HTTP with liveness -------------------------------------------------------------------------
    def _post(self, url: str, path: str, body: dict, retry: bool = True) -> dict:
        try:
            r = requests.post(url + path, json=body, timeout=self.timeout)
        except (requests.ConnectionError, requests.Timeout) as e:
            return self._recover(url, path, body, retry, f"{type(e).__name__}")
        if r.status_code >= 500:
            return self._recover(url, path, body, retry, f"HTTP {r.status_code}: {r.text[:200]}")
        if r.status_code >= 400:
            raise ValueError(f"vLLM server {url}{path} refused the request: HTTP {r.status_code}: {r.text[:300]}")
        is_json = r.headers.get("content-type", "").startswith("application/json")
        return r.json() if is_json else {"text": r.text}  # adapter (un)loading answers in plain text

    def _recover(self, url: str, path: str, body: dict, retry: bool, reason: str) -> dict:
        server = self._owner.get(url)
        if server is None:
            raise ServerError(f"vLLM server {url} failed ({reason}); it is not ours to restart: check it and rerun")
        if not retry:
            raise ServerError(f"vLLM server {url} failed again after a restart ({reason}): {server.log_tail()}")
        exit_code = server.proc.poll() if server.proc else None
        print(f"ttt: vLLM server {url} failed ({reason}, exit code {exit_code}); restarting it", flush=True)
        server.restart()
        if self.version is not None:
            self._load_on(url, self.version, self._adapter_path)
        return self._post(url, path, body, retry=False)

    # -- adapters -----------------------------------------------------------------------------------
    def _load_on(self, url: str, version: int, path: str) -> None:
        self._post(url, "/v1/load_lora_adapter", {"lora_name": f"v{version}", "lora_path": path})

    def load_adapter(self, version: int, path: str) -> None:
        old = self.version
        list(self._pool.map(lambda url: self._load_on(url, version, path), self.urls))
        self.version, self._adapter_path = version, path
        if old is not None and old != version:
            for url in self.urls:
                self._post(url, "/v1/unload_lora_adapter", {"lora_name": f"v{old}"})

    def _model_name(self, version) -> str:
        version = self.version if version == "current" else version
        if version is None:
            return self.model_path
        if version != self.version:
            raise ValueError(f"adapter version {version} is not loaded (loaded: {self.version})")
        return f"v{version}"

    # -- sampling -----------------------------------------------------------------------------------
    def sample(self, prompts_P: Sequence[Sequence[int]], num_samples: int, params: SamplingParams,
               seeds_P: Sequence[int | None] | None = None, version="current",
               on_result: Callable[[int, list[SampledSequence]], None] | None = None) -> list[list[SampledSequence]]:
        """One HTTP request per prompt, all in flight at once; `on_result(p, sequences)` as each returns."""
        params.check(prompts_P, self.max_model_len)
        model = self._model_name(version)
        served_version = self.version if version == "current" else version
        seeds_P = list(seeds_P) if seeds_P is not None else [params.seed] * len(prompts_P)
        stop_strs, stop_ids = params.stop_strings, params.stop_token_ids

        def one(p: int) -> list[SampledSequence]:
            body = {"model": model, "prompt": list(prompts_P[p]), "n": num_samples,
                    "max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
                    "top_k": params.top_k, "seed": seeds_P[p], "logprobs": 0,
                    "return_tokens_as_token_ids": True, "stop": stop_strs, "stop_token_ids": stop_ids}
            out = self._post(self.urls[p % len(self.urls)], "/v1/completions", body)
            choices = sorted(out["choices"], key=lambda c: c["index"])
            return [SampledSequence(
                tokens=[int(t.split(":", 1)[1]) for t in c["logprobs"]["tokens"]],
                logprobs=[float(x) for x in c["logprobs"]["token_logprobs"]],
                stop_reason="length" if c["finish_reason"] == "length" else "stop",
                adapter_version=served_version, text=c["text"]) for c in choices]

        futures = {self._pool.submit(one, p): p for p in range(len(prompts_P))}
        groups: list = [None] * len(prompts_P)
        for future in as_completed(futures):
            p = futures[future]
            groups[p] = future.result()
            if on_result is not None:
                on_result(p, groups[p])
        return groups

    def compute_logprobs(self, tokens_T: Sequence[int], version="current") -> list[float | None]:
        body = {"model": self._model_name(version), "prompt": list(tokens_T), "max_tokens": 1,
                "temperature": 1.0, "prompt_logprobs": 0}
        out = self._post(self.urls[0], "/v1/completions", body)
        scored = out["choices"][0]["prompt_logprobs"]
        return [None if d is None else float(d[str(t)]["logprob"]) for d, t in zip(scored, tokens_T)]
