"""Runs tinker-cookbook 0.6.1's minimal supervised loop (tinker_cookbook/recipes/sl_loop.py) unmodified against a
`ttt serve` server (TINKER_BASE_URL / TINKER_API_KEY), offline: the No Robots download is replaced by four local
conversations and the renderer lookup (hub model names only) by the generic role_colon renderer.

argv: BASE_URL MODEL_PATH LOG_DIR"""

import sys

import datasets

from tinker_cookbook.recipes import sl_loop

base_url, model_path, log_dir = sys.argv[1:4]
rows = {"messages": [[{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i} {i} {i}"}]
                     for i in range(4)]}
sl_loop.datasets.load_dataset = lambda *a, **k: datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)})
sl_loop.model_info.get_recommended_renderer_name = lambda name: "role_colon"

sl_loop.main(sl_loop.Config(base_url=base_url, log_path=log_dir, model_name=model_path, batch_size=2,
                            learning_rate=1e-3, max_length=64, lora_rank=8, save_every=1, ttl_seconds=7200,
                            max_steps=2))
