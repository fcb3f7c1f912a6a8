"""A context model trained on a frozen model's symbols (imgcomp.train.frozen_symbols,
`imgcomp train-context`): same autoencoder and quantizer, exact coding, new fingerprint."""

from pathlib import Path

import numpy as np
import pytest
import torch

from imgcomp import cli
from imgcomp.base.image_files import read_image
from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.config.parsing import load_config
from imgcomp.config.schema import PC_SCHEMA
from imgcomp.entropy_coding.bitstream import BitstreamError
from imgcomp.train import frozen_symbols


def _pc_config(folder: Path, pc_tiny: str, lines: str) -> str:
    path = folder / "pc_grown"
    path.write_text(f"use {pc_tiny}\n{lines}")
    return str(path)


@pytest.fixture(scope="module")
def grown(trained_log_dir, pc_tiny, train_images, tmp_path_factory):
    """The tiny model's log dir and the log dir `imgcomp train-context` made from it: a context
    model with a second block, trained 4 steps on crops of the training images."""
    tmp = tmp_path_factory.mktemp("frozen")
    config = _pc_config(tmp, pc_tiny, "arch_param__num_res_blocks = 2\nlr_initial = 1e-2\n")
    logs = tmp / "logs"
    assert cli.main(["train-context", str(trained_log_dir), config, "--data", str(train_images),
                     "--epochs", "2", "--steps", "4", "--batch_size", "2", "--held_out", "2",
                     "--log_dir_root", str(logs)]) == 0
    (log_dir,) = (p for p in logs.iterdir() if p.name != frozen_symbols.SYMBOLS_DIRNAME)
    return trained_log_dir, log_dir


def test_trained_context_model_codes_exactly_and_decodes_the_same_image(grown, train_images):
    old_dir, new_dir = grown
    old, new = ckpt.load_codec(old_dir), ckpt.load_codec(new_dir)
    assert new_dir.name.split(" ")[1:3] == ["ae_tiny", "pc_grown"]
    assert new_dir.name.endswith(f"RESTORE@{old_dir.parent.name}@{ckpt.job_id_of(old_dir)}")
    assert (new_dir / "console.log").read_text().count("held-out") == 3  # steps 0, 4, summary
    old_state, new_state = old.state_dict(), new.state_dict()
    for name, tensor in old_state.items():
        if name.startswith("probclass."):  # trained further
            assert not torch.equal(tensor, new_state[name]), name
        else:  # frozen
            assert torch.equal(tensor, new_state[name]), name
    assert {n for n in new_state if n.startswith("probclass.res2_")} == {
        f"probclass.res2_conv{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
    assert old.coder()[0] != new.coder()[0]  # a new fingerprint
    image = read_image(sorted(train_images.iterdir())[0])
    symbols = old.symbols(image)
    data = new.compress(image)
    header, decoded = new.decode_symbols(data)
    assert torch.equal(decoded, symbols)
    np.testing.assert_array_equal(new.decompress(data),
                                  old.reconstruct(symbols, *image.shape[:2]))
    with pytest.raises(BitstreamError, match="another model"):  # old files: the old model
        new.decompress(old.compress(image))


@pytest.mark.parametrize("lines", ["arch_param__num_res_blocks = 3\n", "arch_param__k = 12\n",
                                   "arch_param__k = 11\narch_param__num_res_blocks = 2\n"])
def test_wider_or_deeper_context_models_start_where_the_model_is(trained_log_dir, pc_tiny,
                                                                 tmp_path, lines):
    frozen = ckpt.load_codec(trained_log_dir)
    config = load_config(_pc_config(tmp_path, pc_tiny, lines), PC_SCHEMA)
    codec = frozen_symbols.grown_codec(frozen, config)
    assert len(codec.probclass.layers) == 2 + 2 * config.arch_param__num_res_blocks
    assert codec.probclass.conv_in.out_channels == config.arch_param__k
    symbols = torch.randint(0, frozen.quantizer.num_centers, (2, 8, 5, 6))
    bits = frozen_symbols.mean_bits(codec, symbols)
    torch.testing.assert_close(bits, frozen_symbols.mean_bits(frozen, symbols))
    bits.backward()  # every weight learns, but for the added blocks' second convs at first
    for name, p in codec.probclass.named_parameters():
        assert (p.grad.abs().sum() > 0) == ("res2_conv1" not in name and "res3_conv1" not in
                                            name), name


def test_cache_of_other_crops_and_unfit_configs_are_one_line(grown, pc_tiny, train_images,
                                                            tmp_path, capsys):
    old_dir, new_dir = grown
    cache = next((new_dir.parent / frozen_symbols.SYMBOLS_DIRNAME).iterdir())
    config = _pc_config(tmp_path, pc_tiny, "")
    common = ["--data", str(train_images), "--steps", "1", "--batch_size", "2", "--held_out",
              "2", "--log_dir_root", str(tmp_path / "logs")]
    capsys.readouterr()
    assert frozen_symbols.main([str(old_dir), config, "--symbols", str(cache), "--seed", "1",
                                *common]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {cache} holds the symbols of") and err.count("\n") == 1
    narrower = _pc_config(tmp_path, pc_tiny, "arch_param__k = 6\nkernel_size = 5\n")
    assert frozen_symbols.main([str(old_dir), narrower, *common]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: {narrower}: does not fit the model's context model: kernel_size = "
                   "5 (the model's: 3), arch_param__k = 6 (the model's: 8; at least that)\n")
    assert not (tmp_path / "logs").exists()  # nothing written
