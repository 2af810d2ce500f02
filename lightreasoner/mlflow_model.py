"""The registered model: the Expert + LightReasoner LoRA adapter as an MLflow pyfunc model.

Kept apart from :mod:`lightreasoner.registry` so that promote/compare do not import mlflow.pyfunc. The
model folder holds ``artifacts/adapter`` (peft), ``artifacts/tokenizer`` and, in its model config, the
Expert's identity; ``LIGHTREASONER_EXPERT_MODEL`` overrides where the Expert's weights are loaded from.
"""

from __future__ import annotations

import os

import mlflow.pyfunc


class AdapterModel(mlflow.pyfunc.PythonModel):
    """The Expert + LightReasoner LoRA adapter as an MLflow pyfunc model (see the module docstring)."""

    def load_context(self, context):
        from transformers import AutoTokenizer

        from .config import ModelConfig
        from .models import load_model, load_tokenizer

        cfg = dict(context.model_config or {})
        expert = dict(cfg.get("expert") or {})
        if os.environ.get("LIGHTREASONER_EXPERT_MODEL"):
            expert["model"] = os.environ["LIGHTREASONER_EXPERT_MODEL"]
        expert_cfg = ModelConfig(**expert)
        tok_dir = context.artifacts.get("tokenizer")
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir) if tok_dir else load_tokenizer(expert_cfg)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        from peft import PeftModel

        base = load_model(expert_cfg, "expert")
        self.model = PeftModel.from_pretrained(base, context.artifacts["adapter"]).eval()
        self.system_prompt = cfg.get("system_prompt", "")
        self.chat_template = bool(cfg.get("chat_template", True))
        self.max_new_tokens = int(cfg.get("max_new_tokens", 512))

    def predict(self, context, model_input, params=None):
        from .models import generate_greedy, prompt_token_ids

        if isinstance(model_input, str):
            questions = [model_input]
        elif hasattr(model_input, "columns"):
            column = "question" if "question" in model_input.columns else model_input.columns[0]
            questions = [str(q) for q in model_input[column].tolist()]
        else:
            questions = [str(q) for q in model_input]
        max_new = int((params or {}).get("max_new_tokens", self.max_new_tokens))
        prompts = [prompt_token_ids(self.tokenizer, q, self.system_prompt, self.chat_template) for q in questions]
        completions, _ = generate_greedy(self.model, self.tokenizer, prompts, max_new)
        return [self.tokenizer.decode(c, skip_special_tokens=True) for c in completions]
