"""The LoRA learner (Tinker's TrainingClient semantics), one idea per module:

    lora_learner  LoRALearner, LoraSpec, AdamParams: the model, forward/backward, optim_step, saving
    inputs        datums -> validated tensors, and the plan of which datums share a pass
    logprobs      per-token target logprobs from one pass, packed or padded, chunked lm_head
    prefix        shared-prefix passes (a group's rollouts run their common prompt once)
    custom        forward_backward_custom: the user's loss on detached logprobs
    state         save_state / load_state (one process or DeepSpeed ZeRO)
"""

from trainer.learner.lora_learner import (ATTN_MODULES, MLP_MODULES, UNEMBED_MODULES, AdamParams, LoRALearner,
                                          LoraSpec, resolve_dtype)

__all__ = ["ATTN_MODULES", "MLP_MODULES", "UNEMBED_MODULES", "AdamParams", "LoRALearner", "LoraSpec", "resolve_dtype"]
