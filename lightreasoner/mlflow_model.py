"""The registered model: the Expert + LightReasoner LoRA adapter as an MLflow pyfunc model.

MLflow logs this file itself into the model ("models from code"), so the model is self-contained: loading
it needs mlflow, torch, transformers and peft (pinned in the model's requirements to the pipeline image's
versions), never ``lightreasoner``. Hence this file imports nothing from the package and repeats the
few lines that build a prompt (the protocol's literal template when it has one, as
:func:`lightreasoner.protocols.prompt_ids` does; else the chat template with the system prompt, else
``Question: ... Answer:``, as :func:`lightreasoner.models.prompt_token_ids` does for training) and cut the
answer at the protocol's stop strings (:func:`lightreasoner.protocols.cut_output`). Prompt, length, end
tokens and stop strings are the evaluation protocol's that scored the adapter
(:func:`lightreasoner.registry.serving_config`).

The model folder holds ``artifacts/adapter`` (peft) and ``artifacts/tokenizer``; its model config names
where the Expert's weights are (``expert.location``: a hub id or a folder, with ``revision`` and
``gguf_file``). ``LIGHTREASONER_EXPERT_MODEL`` overrides that location (e.g. a mirror of the hub).

Input: a DataFrame with a ``question`` column, or a list of strings. Output: one answer text per question.
"""

from __future__ import annotations

import os

import mlflow
from mlflow.pyfunc import PythonModel


class AdapterModel(PythonModel):
    def load_context(self, context):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = dict(context.model_config or {})
        expert = dict(cfg.get("expert") or {})
        override = os.environ.get("LIGHTREASONER_EXPERT_MODEL")
        location = override or expert.get("location") or expert["model"]
        kwargs = {}
        if not override:
            kwargs = {k: expert[k] for k in ("revision", "gguf_file") if expert.get(k)}
        tokenizer_dir = context.artifacts.get("tokenizer") or location
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, **({} if context.artifacts.get("tokenizer")
                                                                         else kwargs))
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        base = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs).to(self.device)
        self.model = PeftModel.from_pretrained(base, context.artifacts["adapter"]).eval()
        self.system_prompt = cfg.get("system_prompt") or ""
        self.chat_template = bool(cfg.get("chat_template", True))
        self.prompt_template = str(cfg.get("prompt_template") or "")  # the toolkit's literal prompt, if any
        self.stop_strings = [str(t) for t in cfg.get("stop_strings") or []]
        self.max_new_tokens = int(cfg["max_new_tokens"])  # the protocol's budget (registry.serving_config)
        # It stops where its evaluation stopped: the eos (tokenizer's and generation config's) and the
        # protocol's chat-template end tokens.
        vocab = self.tokenizer.get_vocab()
        stops = {int(vocab[t]) for t in cfg.get("stop_tokens") or [] if t in vocab}
        for eos in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            stops.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.stop_ids = sorted(int(i) for i in stops)
        # generation watches the text only for stop strings that are not single tokens (those are stop ids)
        self.text_stops = [s for s in self.stop_strings if s not in vocab]

    def _prompt(self, question: str) -> list[int]:
        if self.prompt_template:  # as plain text, with the tokenizer's usual special tokens (a BOS)
            text = self.prompt_template.replace("{input}", question)
            return [int(i) for i in self.tokenizer(text, add_special_tokens=True)["input_ids"]]
        if self.chat_template and getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": question}]
            if self.system_prompt:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False)
            return [int(i) for i in (ids["input_ids"] if hasattr(ids, "keys") else ids)]
        text = (f"{self.system_prompt}\n\n" if self.system_prompt else "") + f"Question: {question}\nAnswer:"
        return [int(i) for i in self.tokenizer(text)["input_ids"]]

    def predict(self, context, model_input, params=None):
        import torch

        if isinstance(model_input, str):
            questions = [model_input]
        elif hasattr(model_input, "columns"):
            column = "question" if "question" in model_input.columns else model_input.columns[0]
            questions = [str(q) for q in model_input[column].tolist()]
        else:
            questions = [str(q) for q in model_input]
        max_new = int((params or {}).get("max_new_tokens", self.max_new_tokens))
        prompts = [self._prompt(q) for q in questions]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        # Stop strings end generation as soon as every answer has one (transformers' stop_strings), and cut it.
        stops = {"stop_strings": self.text_stops, "tokenizer": self.tokenizer} if self.text_stops else {}
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                      pad_token_id=pad, eos_token_id=self.stop_ids or None, **stops)
        return [self._cut(self.tokenizer.decode(row[width:], skip_special_tokens=True)) for row in out]

    def _cut(self, text: str) -> str:
        cut = min((i for i in (text.find(s) for s in self.stop_strings) if i >= 0), default=-1)
        return text if cut < 0 else text[:cut]


mlflow.models.set_model(AdapterModel())
