"""Every stage takes s3:// URIs for its inputs and outputs (real moto server on 127.0.0.1)."""

import json

import pytest

from lightreasoner.cli import main


@pytest.mark.slow
def test_sample_and_train_through_s3(aws_env, tiny_models, tmp_path, capsys):
    base = f"s3://{aws_env.bucket}/cli-run"
    common = ["--set", f"expert.model={tiny_models['llama']}", "--set", "amateur.keep_layers=1",
              "--set", "data.limit=3", "--set", "sampling.max_new_tokens=6", "--set", "sampling.beta=auto:0.5",
              "--set", "tracking.enabled=false"]
    assert main(["sample", *common, "--output", f"{base}/samples"]) == 0
    keys = aws_env.keys("cli-run/samples/")
    assert "cli-run/samples/manifest.json" in keys and "cli-run/samples/samples.parquet" in keys
    assert not any("/shards/" in k for k in keys)
    assert main(["train", *common, "--set", "training.max_steps=2", "--samples", f"{base}/samples",
                 "--output", f"{base}/train"]) == 0
    manifest = json.loads(aws_env.client().get_object(Bucket=aws_env.bucket, Key="cli-run/train/manifest.json")
                          ["Body"].read())
    assert manifest["steps"] == 2
    assert f"output={base}/train" in capsys.readouterr().out
    assert main(["train", *common, "--samples", f"s3://{aws_env.bucket}/missing", "--output",
                 str(tmp_path / "t")]) == 2
    assert "missing" in capsys.readouterr().err
