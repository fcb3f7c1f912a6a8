"""Log dirs written by the original TensorFlow code: their configs and their weights in our
model.

An original log dir is `ROOT/<JOB_ID> <ae config> <pc config>/ckpts/` holding TF1 checkpoints
`ckpt-STEP.index` + `ckpt-STEP.data-*` (read by imgcomp.original.tf_bundle, without TensorFlow),
TF's `checkpoint` file and `var_names.pkl`. The configs are not in it: as the original's val.py,
they are resolved from the dir name (`cvpr@med` -> `ae_configs/cvpr/med`).
`imgcomp convert` (imgcomp.checkpoints.from_original) writes one as a log dir of ours.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from imgcomp.base.installed_files import installed_files_root
from imgcomp.config.parsing import RESTORE_PREFIX, Config, ConfigError, load_config
from imgcomp.config.schema import AE_SCHEMA, PC_SCHEMA
from imgcomp.original.tf_bundle import read_tf_checkpoint


class TFLogDirError(ValueError):
    """An original log dir that cannot be used (configs not found, weights that do not fit)."""


def is_tf_ckpt_dir(ckpt_dir: str | os.PathLike) -> bool:
    """True for a ckpts/ dir of the original code (TF checkpoints, no `.pt` ones)."""
    path = Path(ckpt_dir)
    return any(path.glob("ckpt-*.index")) and not any(path.glob("ckpt-*.pt"))


def _config_bases(kind: str) -> list[Path]:
    """Where `cvpr@med` is looked up: $CONFIG_BASE_AE / $CONFIG_BASE_PC (as the original), the
    working directory's ae_configs / pc_configs (the original's default), then the ones that
    ship with imgcomp (the checkout's, or a wheel's installed copy)."""
    env = os.environ.get(f"CONFIG_BASE_{kind.upper()}")
    bases = [Path(env)] if env else []
    return bases + [Path.cwd() / f"{kind}_configs", installed_files_root() / f"{kind}_configs"]


def _resolve_config(component: str, kind: str, log_dir: Path) -> Path:
    """`cvpr@med` -> `<base>/cvpr/med`. The original wrote '-' in config names as '*', so
    the name is a glob; of its matches, the one of the same length is meant."""
    relative = component.replace("@", os.sep)
    for base in _config_bases(kind):
        pattern = str(base / relative)
        matches = [m for m in glob.glob(pattern) if len(m) == len(pattern) and os.path.isfile(m)]
        if len(matches) == 1:
            return Path(matches[0])
    tried = ", ".join(str(b / relative) for b in _config_bases(kind))
    raise TFLogDirError(f"{log_dir}: config {component!r} not found (tried {tried}; set "
                        f"$CONFIG_BASE_{kind.upper()})")


def configs_from_log_dir_name(log_dir: str | os.PathLike) -> tuple[Config, Config]:
    """The ae and pc configs a log dir is named after, as the original's val.py finds them."""
    log_dir = Path(log_dir)
    parts = [p for p in log_dir.name.split(" ")[1:] if RESTORE_PREFIX not in p]
    if len(parts) != 2:
        raise TFLogDirError(f"{log_dir}: name is not '<JOB_ID> <ae config> <pc config>'")
    try:
        return (load_config(_resolve_config(parts[0], "ae", log_dir), AE_SCHEMA,
                            note_unused=False),
                load_config(_resolve_config(parts[1], "pc", log_dir), PC_SCHEMA,
                            note_unused=False))
    except ConfigError as e:
        raise TFLogDirError(f"{log_dir}: {e}") from e


# Layouts: TF conv2d HWIO and conv2d_transpose HW(out)(in) both become PyTorch's
# (dim0, dim1, H, W) by the same permutation; conv3d DHWIO -> OIDHW.
_CONV2D = (3, 2, 0, 1)
_CONV3D = (4, 3, 0, 1, 2)


def _conv_bn(ours: str, tf: str, bn: str | None = None) -> Iterator[tuple[str, str, tuple]]:
    yield f"{ours}.weight", f"{tf}/weights", _CONV2D
    if bn is not None:
        for our_name, tf_name in (("weight", "gamma"), ("bias", "beta"),
                                  ("running_mean", "moving_mean"),
                                  ("running_var", "moving_variance")):
            yield f"{bn}.{our_name}", f"{tf}/BatchNorm/{tf_name}", ()


def _trunk(ours: str, tf: str, side: str, num_groups: int, final: str
           ) -> Iterator[tuple[str, str, tuple]]:
    for b in range(num_groups):
        for i in range(3):
            for conv in (1, 2):
                base = f"{ours}.groups.{b}.{i}"
                yield from _conv_bn(f"{base}.conv{conv}",
                                    f"{tf}/res_block_{side}_{b}/{side}_{b}_{i + 1}/conv{conv}",
                                    f"{base}.bn{conv}")
    for conv in (1, 2):
        yield from _conv_bn(f"{ours}.final.conv{conv}", f"{tf}/{final}/conv{conv}",
                            f"{ours}.final.bn{conv}")


def tf_variable_map(num_groups: int) -> list[tuple[str, str, tuple]]:
    """(our state-dict key, the original's variable name, axis permutation) for the 'CVPR'
    autoencoder with BatchNorm at to_bn / h13, the centres and the 'res_shallow' probclass."""
    enc, dec = "autoencoder.encoder", "autoencoder.decoder"
    mapping = [("quantizer.centers", "autoencoder/encoder/centers", ())]
    mapping += _conv_bn(f"{enc}.head.0.0", "autoencoder/encoder/h1", f"{enc}.head.0.1")
    mapping += _conv_bn(f"{enc}.head.1.0", "autoencoder/encoder/h2", f"{enc}.head.1.1")
    mapping += _trunk(f"{enc}.trunk", "autoencoder/encoder", "enc", num_groups,
                      "res_block_enc_final")
    mapping += _conv_bn(f"{enc}.out", "autoencoder/encoder/to_bn", f"{enc}.out_bn")
    mapping += _conv_bn(f"{dec}.head.0", "autoencoder/decoder/from_bn", f"{dec}.head.1")
    mapping += _trunk(f"{dec}.trunk", "autoencoder/decoder", "dec", num_groups, "dec_after_res")
    mapping += _conv_bn(f"{dec}.tail.0.0", "autoencoder/decoder/h12", f"{dec}.tail.0.1")
    mapping += _conv_bn(f"{dec}.tail.1", "autoencoder/decoder/h13", f"{dec}.tail.2")
    for ours, tf in (("conv_in", "conv3d_conv0_mask"), ("res_conv1", "res1/conv3d_conv1_mask"),
                     ("res_conv2", "res1/conv3d_conv2_mask"), ("conv_out", "conv3d_conv2_mask")):
        mapping.append((f"probclass.{ours}.weight", f"probclass3d/logits/{tf}/weights", _CONV3D))
        mapping.append((f"probclass.{ours}.bias", f"probclass3d/logits/{tf}/biases", ()))
    return mapping


def read_tf_state(prefix: str | os.PathLike, ae_cfg: Config, pc_cfg: Config
                  ) -> dict[str, Any]:
    """Checkpoint `prefix` of the original as a checkpoint of ours: {"step", "model" (the
    state dict of the configs' model, which must be the original's graph: TF 'SAME' padding,
    BatchNorm at to_bn / h13), "tf_names" (our name -> the original's)}. The Adam slots and
    beta powers are not read."""
    # Imported here: listing and naming original log dirs (`imgcomp models`) needs no torch.
    import torch

    from imgcomp.codec.image_codec import ImageCodec

    mapping = tf_variable_map(ae_cfg.arch_param_B)
    state = ImageCodec.from_configs(ae_cfg, pc_cfg).state_dict()  # names and shapes
    unmapped = sorted(k for k in state if not k.endswith("num_batches_tracked")
                      and k not in {ours for ours, _, _ in mapping})
    if unmapped:
        raise TFLogDirError(f"{prefix}: the configured model is not the original's graph "
                            f"(no TF variable for {', '.join(unmapped[:3])}; set "
                            "tf_same_padding / bottleneck_output_bn = True)")
    tensors = read_tf_checkpoint(prefix, [tf for _, tf, _ in mapping] + ["global_step"])
    for ours, tf, axes in mapping:
        value = torch.from_numpy(np.ascontiguousarray(tensors[tf].transpose(axes or None)))
        if value.shape != state[ours].shape:
            raise TFLogDirError(f"{prefix}: {tf} has shape {tuple(tensors[tf].shape)}, the "
                                f"configured model needs {tuple(state[ours].shape)} for {ours}")
        state[ours] = value
    return {"step": int(tensors["global_step"]), "model": state,
            "tf_names": {ours: tf for ours, tf, _ in mapping}}
