"""The HF sampler's stop-string check decodes a bounded tail per token, not each row's whole output (which made
a step's stop checks quadratic in its length), and still cuts where a full decode would."""

from inference.hf_sampler import HFSampler
from inference.types import SamplingParams
from test_hf_sampler import PROMPT


def test_stop_check_decodes_a_bounded_tail(tiny_model_path, monkeypatch):
    sampler = HFSampler(tiny_model_path)
    lengths = []
    decode = sampler.tokenizer.decode

    def counting_decode(tokens, **kw):
        lengths.append(len(tokens))
        return decode(tokens, **kw)

    monkeypatch.setattr(sampler.tokenizer, "decode", counting_decode)
    stop = "\u00a7never\u00a7"  # 7 characters: a tail of 4 * 7 + 4 = 32 tokens
    seqs = sampler.sample([PROMPT], 4, SamplingParams(max_tokens=96, temperature=1.0, stop=[stop]), [5],
                          version=None)[0]
    assert all(s.stop_reason == "length" and len(s.tokens) == 96 for s in seqs)
    checks = lengths[:-4]  # the last 4 decodes build the returned texts
    assert len(checks) >= 4 * 90 and max(checks) == 32


def test_tail_check_cuts_where_a_full_decode_would(tiny_model_path):
    sampler = HFSampler(tiny_model_path)
    free = sampler.sample([PROMPT], 8, SamplingParams(max_tokens=64, temperature=1.0), [33], version=None)[0]
    text = max((s.text for s in free), key=len)
    stop = text[len(text) // 2: len(text) // 2 + 3]  # a string that appears late in one of the rows
    cut = sampler.sample([PROMPT], 8, SamplingParams(max_tokens=64, temperature=1.0, stop=[stop]), [33],
                         version=None)[0]
    hits = 0
    for a, b in zip(free, cut):
        if stop in a.text:
            hits += 1
            assert b.stop_reason == "stop" and b.text == a.text[:a.text.find(stop)]
        else:
            assert b.tokens == a.tokens
    assert hits >= 1
