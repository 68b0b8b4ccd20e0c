"""Resume safety: checkpoints are only resumed against the exact base model that produced them."""

from __future__ import annotations

import shutil

from srvau.training.checkpoints import checkpoint_digest


def test_checkpoint_digest_follows_content_not_path(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert checkpoint_digest(copy) == checkpoint_digest(tiny_model_dir)  # same bytes, other folder
    tok = copy / "tokenizer.json"
    tok.write_text(tok.read_text().replace("<reflection>", "<reflexion>"))
    assert checkpoint_digest(copy) != checkpoint_digest(tiny_model_dir)  # rebuilt in place: new identity
    assert checkpoint_digest("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"
