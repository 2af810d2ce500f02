"""Expected bad input is one line; wrapped failures keep their cause (``-v`` prints it); out of memory is
never summarised as bad input."""

import pytest
import torch

from lightreasoner import errors
from lightreasoner.cli import main
from lightreasoner.config import ModelConfig
from lightreasoner.errors import LightReasonerError
from lightreasoner.models import load_model


def test_one_line_takes_the_first_line_masks_secrets_and_shortens():
    assert errors.one_line(ValueError("first\nsecond")) == "first"
    assert errors.one_line(KeyError()) == "KeyError"
    assert errors.one_line(RuntimeError("see http://bob:hunter2pw@host/x")) == "see http://bob:***@host/x"
    assert errors.one_line(RuntimeError("x" * 500), limit=50).endswith("...")


def test_a_wrapped_failure_keeps_its_cause(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LightReasonerError, match="cannot load") as info:
        load_model(ModelConfig(model=str(tmp_path)))
    assert info.value.__cause__ is not None


def test_out_of_memory_is_not_turned_into_bad_input(monkeypatch, tmp_path):
    from transformers import AutoModelForCausalLM

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", oom)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(torch.OutOfMemoryError):
        load_model(ModelConfig(model=str(tmp_path)))


def test_verbose_prints_the_traceback_of_a_one_line_error(tmp_path, capsys):
    args = ["sample", "--set", f"expert.model={tmp_path / 'missing'}", "--output", str(tmp_path / "out")]
    assert main(args) == 2
    quiet = capsys.readouterr().err
    assert quiet.strip().count("\n") == 0 and quiet.startswith("error: ") and "Traceback" not in quiet
    assert main(["-v", *args]) == 2
    loud = capsys.readouterr().err
    assert "Traceback (most recent call last)" in loud and loud.rstrip().splitlines()[-1] == quiet.strip()
