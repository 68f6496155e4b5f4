"""Runs tinker-cookbook 0.6.1's minimal RL loop (tinker_cookbook/recipes/rl_loop.py) unmodified against a
`ttt serve` server (TINKER_BASE_URL / TINKER_API_KEY), offline: the GSM8K download is replaced by four local
rows, the renderer lookup (hub model names only) by the generic role_colon renderer, and the reward (a random
tiny model never answers GSM8K) by one that varies within a group so that advantages are non-zero.

argv: BASE_URL MODEL_PATH LOG_DIR"""

import sys

import datasets

from tinker_cookbook.recipes import rl_loop

base_url, model_path, log_dir = sys.argv[1:4]
rows = {"question": [f"What is {i} + {i}?" for i in range(4)], "answer": [f"#### {2 * i}" for i in range(4)]}
datasets.load_dataset = lambda *a, **k: datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)})
rl_loop.model_info.get_recommended_renderer_name = lambda name: "role_colon"
rl_loop.get_reward = lambda response, answer: float(len(response) % 2)

rl_loop.main(rl_loop.Config(base_url=base_url, log_path=log_dir, model_name=model_path, batch_size=2,
                            group_size=4, learning_rate=1e-3, lora_rank=8, save_every=0, max_tokens=8,
                            loss_fn="importance_sampling", max_steps=2))
