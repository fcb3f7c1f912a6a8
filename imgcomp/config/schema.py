"""Every key of the autoencoder (ae) and probability-model (pc) configs: type, default, meaning.

`load_config(path, AE_SCHEMA)` (imgcomp.config.parsing) rejects a key that is not declared here
(with
the nearest declared key as a suggestion) and a value of the wrong type, both named by file and
line. Keys of the original's configs that the port does not use are accepted and noted.

The defaults are the values of `ae_configs/base` and `pc_configs/base`, which every config
`use`s: those files set them, the schema states them (tests/test_config.py checks they agree).

Types: an int is accepted where a float is expected (`lr_initial = 1`); bools and numbers are
kept apart (`heatmap = 1` and `batch_size = True` are errors), as `constrain` lines already do.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ValueType:
    """What values a key takes: `name` for messages, `accepts` to check a value."""

    name: str
    accepts: Callable[[Any], bool]
    choices: tuple[str, ...] = ()  # the words of an enumeration, as in its `constrain` line


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


INT = ValueType("int", _is_int)
FLOAT = ValueType("float", _is_number)
BOOL = ValueType("bool (True or False)", lambda v: isinstance(v, bool))
STR = ValueType("str", lambda v: isinstance(v, str))


def optional(value_type: ValueType) -> ValueType:
    return ValueType(f"{value_type.name} or None",
                     lambda v: v is None or value_type.accepts(v))


def pair(value_type: ValueType) -> ValueType:
    """Two values, as a tuple (or a list): `(160, 160)`."""
    return ValueType(f"a pair ({value_type.name}, {value_type.name})",
                     lambda v: isinstance(v, tuple | list) and len(v) == 2
                     and all(value_type.accepts(x) for x in v))


def one_of(*words: str) -> ValueType:
    return ValueType("one of " + ", ".join(words), lambda v: isinstance(v, str) and v in words,
                     words)


@dataclass(frozen=True)
class Key:
    name: str
    type: ValueType
    default: Any
    doc: str


@dataclass(frozen=True)
class ConfigSchema:
    """The keys of one kind of config ("ae" or "pc") and the original's keys it ignores."""

    kind: str
    keys: dict[str, Key]
    unused_original_keys: dict[str, str]  # key -> why the port does not use it

    def unknown_key_problem(self, name: str) -> str | None:
        """Why `name` may not be set in this kind of config, or None if it may."""
        if name in self.keys or name in self.unused_original_keys:
            return None
        for other in SCHEMAS.values():
            if other is not self and name in other.keys:
                return (f"{name!r} is a key of {other.kind} configs, not of {self.kind} "
                        "configs (config files swapped?)")
        close = difflib.get_close_matches(name, [*self.keys, *self.unused_original_keys], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} config key {name!r}{hint}"

    def type_problem(self, name: str, value: Any) -> str | None:
        """What is wrong with `value` for the declared key `name`, or None."""
        key = self.keys.get(name)
        if key is None or key.type.accepts(value):
            return None
        return f"{name} = {value!r}: expected {key.type.name}, got {type(value).__name__}"


def _schema(kind: str, keys: list[Key], unused_original_keys: dict[str, str]) -> ConfigSchema:
    return ConfigSchema(kind, {key.name: key for key in keys}, unused_original_keys)


_OPTIMIZER = one_of("ADAM", "MOMENTUM", "SGD")
_LR_SCHEDULE = one_of("FIXED", "DECAY")
_WEIGHT_INIT = one_of("xavier", "torch")
_ADAM_EPSILON = one_of("tf1", "torch")

# Each of the autoencoder and the context model has its own optimizer and schedule.
_OPTIMIZATION_KEYS = [
    Key("lr_initial", FLOAT, 1e-4, "learning rate before decay"),
    Key("optimizer", _OPTIMIZER, "ADAM", "ADAM, MOMENTUM (Nesterov) or SGD"),
    Key("optimizer_momentum", FLOAT, 0.9, "momentum of optimizer = MOMENTUM"),
    Key("lr_schedule", _LR_SCHEDULE, "DECAY", "FIXED rate or exponential DECAY"),
    Key("lr_schedule_decay_interval", FLOAT, 2, "epochs per decay by lr_schedule_decay_rate"),
    Key("lr_schedule_decay_rate", FLOAT, 0.1, "factor per lr_schedule_decay_interval"),
    Key("lr_schedule_decay_staircase", BOOL, True, "decay in steps (False: smoothly)"),
]

AE_SCHEMA = _schema("ae", [
    # The original's keys (ae_configs/base of fab-jul/imgcomp-cvpr).
    Key("num_chan_bn", INT, 192, "channels C of the bottleneck"),
    Key("regularization_factor", optional(FLOAT), 1e-2,
        "weight of the autoencoder's L2 weight penalty (None or 0: off)"),
    Key("normalization", one_of("OFF", "FIXED"), "FIXED",
        "input normalization: FIXED with ImageNet's mean and variance, or OFF"),
    Key("heatmap", BOOL, True, "importance map masking the bottleneck"),
    Key("beta", FLOAT, 250, "weight of the rate term beta * max(H_soft - H_target, 0)"),
    Key("train_autoencoder", BOOL, True, "update the autoencoder (False: frozen)"),
    Key("train_probclass", BOOL, True, "update the probability model (False: frozen)"),
    Key("arch", STR, "TwoLayerNet", "autoencoder architecture; the port implements 'CVPR'"),
    Key("distortion_to_minimize", one_of("mse", "psnr", "ms_ssim"), "mse",
        "distortion term of the loss"),
    Key("K_psnr", FLOAT, 100, "distortion K_psnr - PSNR (distortion_to_minimize = psnr)"),
    Key("K_ms_ssim", FLOAT, 5000,
        "distortion K_ms_ssim * (1 - MS-SSIM) (distortion_to_minimize = ms_ssim)"),
    Key("centers_initial_range", pair(FLOAT), (-2, 2),
        "quantization centres start uniform in this range"),
    Key("num_centers", INT, 6, "number L of quantization centres (symbols)"),
    Key("regularization_factor_centers", optional(FLOAT), 0.1,
        "weight of the centres' L2 penalty (None or 0: off)"),
    Key("H_target", optional(FLOAT), None,
        "target entropy in bits per bottleneck symbol (64/C * bpp); None: no rate term"),
    Key("crop_size", pair(INT), (128, 128), "training and test crop (height, width)"),
    Key("batch_size", INT, 30, "images per step (per process with torchrun)"),
    *_OPTIMIZATION_KEYS,
    Key("lr_centers_factor", optional(FLOAT), None,
        "the centres' learning rate is lr * this (None: lr)"),
    Key("arch_param_B", INT, 3, "residual groups (of 3 blocks) in the encoder and decoder"),
    # Added by the port.
    Key("arch_param_n", INT, 128, "channels of the CVPR autoencoder's conv layers"),
    Key("quantizer_sigma", FLOAT, 1, "sharpness of the soft quantization"),
    Key("bn_momentum", FLOAT, 0.1, "BatchNorm momentum (PyTorch's; TF decay 0.9)"),
    Key("bn_eps", FLOAT, 1e-5, "BatchNorm epsilon"),
    Key("K_mse", FLOAT, 0, "weight of an MSE term added to an ms_ssim or psnr distortion"),
    # The original's graph and training, or the port's former choices (README.md).
    Key("tf_same_padding", BOOL, True, "TensorFlow's SAME padding (False: PyTorch's)"),
    Key("bottleneck_output_bn", BOOL, True, "BatchNorm after to_bn and h13 (False: biases)"),
    Key("weight_init", _WEIGHT_INIT, "xavier", "Glorot-uniform weights (torch: PyTorch's)"),
    Key("random_flip", BOOL, True, "random left-right flip of training crops"),
    Key("train_ms_ssim", one_of("graph", "eval"), "graph",
        "MS-SSIM of the training loss: the original's training graph or its evaluation"),
    Key("adam_epsilon", _ADAM_EPSILON, "tf1", "Adam's epsilon as TF1 (torch: PyTorch's)"),
    Key("epoch_steps", one_of("floor", "exact"), "floor",
        "steps per epoch of DECAY: num_images // batch_size, or the exact ratio"),
    Key("output_uint8", one_of("truncate", "round"), "truncate",
        "reconstruction to uint8 by truncation (round: to nearest)"),
], {})

PC_SCHEMA = _schema("pc", [
    Key("arch", STR, "base", "context model architecture; the port implements 'res_shallow'"),
    Key("kernel_size", INT, 5, "K of the K//2+1 x K x K masked 3D convolutions"),
    # optimizer_momentum is not in pc_configs/base (the original's sets it): a MOMENTUM pc
    # config must set it.
    *_OPTIMIZATION_KEYS,
    Key("arch_param__k", INT, 24, "channels of the context model's conv layers"),
    # Added by the port: a larger context model (the paper's 'res_shallow' has one block).
    Key("arch_param__num_res_blocks", INT, 1, "residual blocks of the context model"),
    Key("regularization_factor", optional(FLOAT), None,
        "weight of the context model's L2 weight penalty (None or 0: off)"),
    Key("use_centers_for_padding", BOOL, True, "pad the context with centres[0] (False: 0)"),
    # The original's graph and training, or the port's former choices (README.md).
    Key("logits_relu", BOOL, True, "ReLU on the logits, as the original (False: linear)"),
    Key("objective", one_of("total_loss", "H_real"), "total_loss",
        "what trains the context model: the total loss's rate term, or its cross-entropy"),
    Key("weight_init", _WEIGHT_INIT, "xavier", "Glorot-uniform weights (torch: PyTorch's)"),
    Key("adam_epsilon", _ADAM_EPSILON, "tf1", "Adam's epsilon as TF1 (torch: PyTorch's)"),
], {
    "arch_param__non_linearity": "read by no code of the original either",
    "arch_param__fc": "read by no code of the original either",
    "learn_pad_var": "the original's probclass pads with learn_pad_var=False whatever it says",
})

SCHEMAS = {schema.kind: schema for schema in (AE_SCHEMA, PC_SCHEMA)}
