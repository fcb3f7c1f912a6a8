"""The original TensorFlow training graph of Mentzer et al. (fab-jul/imgcomp-cvpr, `code/`) for
ae `cvpr/med` + pc `cvpr/res_shallow`, in TF1 graph mode (tf.compat.v1).

A re-implementation written from reading the original's autoencoder.py, quantizer.py,
probclass.py, ms_ssim.py, bits.py, train.py (get_loss, get_train_op, Distortions),
training_helpers.py and fjcommon.tf_helpers (create_train_op_with_different_lrs): the same
variable names and scopes, op types and op order. It is validated against the tensors the
original code recorded (`$IMGCOMP_SHARED/fixtures/original_tf1`) by validate.py next to this
file; throughput.py times its train steps. Neither the package nor its tests import this.

Needs TensorFlow, which is not a dependency of the project:
    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0

Layout: the original builds every 2D conv / transposed conv / fused BN with data_format='NCHW'
(TF's CPU kernels need NHWC; the original ran on GPU, and the fixture was made with Grappler's
NCHW->NHWC layout conversion). Here the autoencoder convs, BN and MS-SSIM are NHWC (input x is
NHWC); the bottleneck output of `to_bn` is transposed to NCHW, and the heatmap, masking,
quantizer, probclass (whose conv3d is NDHWC with D = bottleneck channels in the original too)
and the losses run exactly as the original in NCHW; qbar/qhard are transposed back to NHWC for
the decoder. The weight layouts (HWIO, HW(out)(in), DHWIO) are unaffected.
"""

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1

REPO = Path(__file__).resolve().parents[1]
DEFAULT_AE_CONFIG = REPO / "ae_configs/cvpr/med"
DEFAULT_PC_CONFIG = REPO / "pc_configs/cvpr/res_shallow"

Activation = Callable[[tf.Tensor], tf.Tensor] | None

# --------------------------------------------------------------------------- configs


class Config(dict):
    """A parsed config; keys are also attributes, as in the original (`config.num_centers`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:  # hasattr, getattr with a default and copy need AttributeError
            raise AttributeError(name) from None


def parse_config(path: str | Path) -> dict[str, Any]:
    """Minimal reader of the original's config format (fjcommon.config_parser): `use <parent>`
    lines (path relative to the file), `constrain ...` lines (ignored) and
    `key = python-literal-expression` lines."""
    path = Path(path)
    config: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("constrain"):
            continue
        if line.startswith("use "):
            config.update(parse_config(path.parent / line[4:].strip()))
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        try:  # an expression, e.g. `H_target = 2*0.6`
            config[key] = eval(compile(ast.parse(value, mode="eval"), str(path), "eval"), {})
        except NameError:  # bare identifiers of `constrain`ed keys, e.g. `normalization = FIXED`
            config[key] = value
    return config


# Keys of the port's configs that the original does not have: this graph is the original's only
# with these values (absent keys mean the default, which is the original's behaviour).
_AE_PORT_KEYS = dict(arch_param_n=128, quantizer_sigma=1, bn_momentum=0.1, bn_eps=1e-5,
                     tf_same_padding=True, bottleneck_output_bn=True, weight_init="xavier",
                     train_ms_ssim="graph", adam_epsilon="tf1", epoch_steps="floor", K_mse=0)
_PC_PORT_KEYS = dict(logits_relu=True, objective="total_loss", weight_init="xavier",
                     adam_epsilon="tf1", learn_pad_var=False)


def load_configs(ae_path: str | Path = DEFAULT_AE_CONFIG,
                 pc_path: str | Path = DEFAULT_PC_CONFIG) -> tuple[Config, Config]:
    """The repo's ae and pc configs, checked to be ones this graph implements."""
    ae, pc = Config(parse_config(ae_path)), Config(parse_config(pc_path))
    if not (ae.arch == "CVPR" and pc.arch == "res_shallow" and ae.normalization == "FIXED"
            and ae.heatmap and ae.distortion_to_minimize == "ms_ssim" and ae.optimizer == "ADAM"
            and pc.optimizer == "ADAM" and pc.use_centers_for_padding
            and pc.regularization_factor is None):
        raise ValueError(f"{ae_path} + {pc_path}: not a configuration this graph implements")
    for config, path, port_keys in ((ae, ae_path, _AE_PORT_KEYS), (pc, pc_path, _PC_PORT_KEYS)):
        for key, value in port_keys.items():
            if config.get(key, value) != value:
                raise ValueError(f"{path}: {key} = {config[key]!r}, the original has {value!r}")
    return ae, pc


# --------------------------------------------------------------------------- slim equivalents

_SLIM_WEIGHTS_INIT = tf1.glorot_uniform_initializer  # slim's xavier_initializer() (uniform)


def _l2_regularizer(scale: float) -> Callable[[tf.Variable], tf.Tensor]:
    """slim.l2_regularizer: scale * tf.nn.l2_loss(w)."""
    def l2(weights: tf.Variable) -> tf.Tensor:
        with tf1.name_scope(None, "l2_regularizer", [weights]) as name:
            scale_t = tf1.convert_to_tensor(scale, dtype=weights.dtype.base_dtype, name="scale")
            return tf1.multiply(scale_t, tf1.nn.l2_loss(weights), name=name)
    return l2


def _get_weights(shape: tuple[int, ...], reg_factor: float) -> tf.Variable:
    weights = tf1.get_variable("weights", shape=shape, dtype=tf.float32,
                               initializer=_SLIM_WEIGHTS_INIT())
    if not tf1.get_variable_scope().reuse:  # slim adds the regularizer only on creation
        with tf1.name_scope("Regularizer"):
            tf1.add_to_collection(tf1.GraphKeys.REGULARIZATION_LOSSES,
                                  _l2_regularizer(reg_factor)(weights))
    return weights


def _assign_moving_average(variable: tf.Variable, value: tf.Tensor,
                           momentum: tf.Tensor) -> tf.Tensor:
    """keras BatchNormalization._assign_moving_average (graph mode): decay = 1 - momentum is
    computed in float32 from a float32 momentum tensor (0.100000024, not 0.1)."""
    with tf1.name_scope("AssignMovingAvg") as scope:
        with tf1.colocate_with(variable):
            decay = tf1.convert_to_tensor(1.0 - momentum, name="decay")
            update_delta = (variable - tf1.cast(value, variable.dtype)) * decay
            return tf1.assign_sub(variable, update_delta, name=scope)


def _fused_batch_norm(x: tf.Tensor, is_training: bool, decay: float = 0.9,
                      epsilon: float = 1e-5) -> tf.Tensor:
    """slim.batch_norm(fused=True, scale=True, updates_collections=tf.GraphKeys.UPDATE_OPS):
    with the default UPDATE_OPS collection slim delegates to the core layer
    tf.layers.BatchNormalization(fused=True, momentum=decay) (keras legacy layer): variables
    gamma, beta, moving_mean, moving_variance (in that creation order); training: FusedBatchNorm
    with batch statistics, moving-average updates (Bessel-corrected batch variance, as the fused
    op returns it) added to UPDATE_OPS; inference: FusedBatchNorm with the moving statistics.
    NHWC here (the original: NCHW, axis=1)."""
    with tf1.variable_scope("BatchNorm"):
        channels = x.shape[-1]
        gamma = tf1.get_variable("gamma", (channels,), tf.float32, tf1.ones_initializer())
        beta = tf1.get_variable("beta", (channels,), tf.float32, tf1.zeros_initializer())
        moving_mean = tf1.get_variable("moving_mean", (channels,), tf.float32,
                                       tf1.zeros_initializer(), trainable=False)
        moving_variance = tf1.get_variable("moving_variance", (channels,), tf.float32,
                                           tf1.ones_initializer(), trainable=False)
        out, batch_mean, batch_variance = tf1.nn.fused_batch_norm(
            x, gamma, beta, mean=moving_mean, variance=moving_variance, epsilon=epsilon,
            is_training=is_training, data_format="NHWC")
        if is_training:
            momentum = tf1.convert_to_tensor(decay)
            tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS,
                                  _assign_moving_average(moving_mean, batch_mean, momentum))
            tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS,
                                  _assign_moving_average(moving_variance, batch_variance, momentum))
        out.set_shape(x.shape)
        return out


def _batch_norm_activation(x: tf.Tensor, is_training: bool, activation_fn: Activation
                           ) -> tf.Tensor:
    """slim's normalizer_fn (batch norm, no bias) and activation after a conv."""
    out = _fused_batch_norm(x, is_training)
    return activation_fn(out) if activation_fn is not None else out


def conv2d(x: tf.Tensor, num_outputs: int, kernel_size: int, stride: int, scope: str,
           is_training: bool, reg_factor: float,
           activation_fn: Activation = tf1.nn.relu) -> tf.Tensor:
    """slim.conv2d(padding='SAME') + slim.batch_norm normalizer (no bias) + activation."""
    with tf1.variable_scope(scope):
        weights = _get_weights((kernel_size, kernel_size, int(x.shape[-1]), num_outputs),
                               reg_factor)
        out = tf1.nn.conv2d(x, weights, [1, stride, stride, 1], "SAME", data_format="NHWC")
        return _batch_norm_activation(out, is_training, activation_fn)


def conv2d_transpose(x: tf.Tensor, num_outputs: int, kernel_size: int, stride: int, scope: str,
                     is_training: bool, reg_factor: float,
                     activation_fn: Activation = tf1.nn.relu) -> tf.Tensor:
    """slim.conv2d_transpose(padding='SAME'): kernel HW(out)(in), output = stride * input."""
    with tf1.variable_scope(scope):
        weights = _get_weights((kernel_size, kernel_size, num_outputs, int(x.shape[-1])),
                               reg_factor)
        in_shape = tf1.shape(x)
        out_shape = tf1.stack([in_shape[0], in_shape[1] * stride, in_shape[2] * stride,
                               num_outputs])
        out = tf1.nn.conv2d_transpose(x, weights, out_shape, [1, stride, stride, 1], "SAME",
                                      data_format="NHWC")
        # the dynamic output shape loses the static one, which BN needs for its channel count
        out.set_shape([x.shape[0]] + [None if d is None else d * stride for d in x.shape[1:3]]
                      + [num_outputs])
        return _batch_norm_activation(out, is_training, activation_fn)


def residual_block(x: tf.Tensor, num_outputs: int, num_conv2d: int, scope: str,
                   is_training: bool, reg_factor: float,
                   activation_fn: Activation = tf1.nn.relu) -> tf.Tensor:
    """autoencoder.residual_block. As in the original, an explicit activation_fn=None applies to
    ALL convs (the kwargs are shared); otherwise only the last conv has no activation."""
    residual_input = x
    with tf1.variable_scope(scope, "res"):
        for conv_i in range(num_conv2d):
            if conv_i == num_conv2d - 1:
                activation_fn = None
            x = conv2d(x, num_outputs, 3, 1, f"conv{conv_i + 1}", is_training, reg_factor,
                       activation_fn=activation_fn)
        return x + residual_input


# --------------------------------------------------------------------------- autoencoder

SCOPE_AE_ENC = "autoencoder/encoder"
SCOPE_AE_DEC = "autoencoder/decoder"
_ARCH_PARAM_N = 128  # the CVPR autoencoder's width (the original's arch_param_n)
_HARD_SIGMA = 1e7
# the original's fixed normalization (normalization = FIXED): ImageNet mean and variance (NHWC)
_MEAN = np.array([121.85369873, 113.58860779, 100.63715363], dtype=np.float32)
_VAR = np.array([4746.37695312, 4454.13964844, 4812.234375], dtype=np.float32)


class EncoderOutput(NamedTuple):
    qbar: tf.Tensor
    qhard: tf.Tensor
    symbols: tf.Tensor
    z: tf.Tensor
    heatmap: tf.Tensor
    bottleneck: tf.Tensor
    qsoft: tf.Tensor


def _to_nchw(t: tf.Tensor) -> tf.Tensor:
    return tf1.transpose(t, (0, 3, 1, 2), name="to_NCHW")


def _to_nhwc(t: tf.Tensor) -> tf.Tensor:
    return tf1.transpose(t, (0, 2, 3, 1), name="to_NHWC")


def _quantize1d(x: tf.Tensor, centers: tf.Variable, sigma: float
                ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """quantizer._quantize1d, x NCHW -> (soft, hard, symbols), each NCHW."""
    num_centers = centers.get_shape().as_list()[-1]
    with tf1.name_scope("reshape_BCm1"):
        x_shape_nchw = tf1.shape(x)
        x = tf1.reshape(x, [x_shape_nchw[0], int(x.shape[1]), -1])
        x = tf1.expand_dims(x, axis=-1)
    with tf1.name_scope("dist"):
        dist = tf1.square(tf1.abs(x - centers))
    with tf1.name_scope("phi_soft"):
        phi_soft = tf1.nn.softmax(-sigma * dist, axis=-1)
    with tf1.name_scope("phi_hard"):
        phi_hard = tf1.nn.softmax(-_HARD_SIGMA * dist, axis=-1)
        symbols_hard = tf1.argmax(phi_hard, axis=-1)
        phi_hard = tf1.one_hot(symbols_hard, depth=num_centers, axis=-1, dtype=tf.float32)
    with tf1.name_scope("softout"):
        softout = tf1.reduce_sum(phi_soft * centers, axis=3)
    with tf1.name_scope("hardout"):
        hardout = tf1.reduce_sum(phi_hard * centers, axis=3)
    outputs = []
    for t in (softout, hardout, symbols_hard):
        with tf1.name_scope("reshape_BCwh"):
            outputs.append(tf1.reshape(t, x_shape_nchw))
    return tuple(outputs)


def _residual_stack(net: tf.Tensor, part: str, final_scope: str, num_blocks: int,
                    is_training: bool, reg_factor: float) -> tf.Tensor:
    """The residual middle of the encoder (part 'enc') or decoder ('dec'): `num_blocks` blocks of
    three residual units, each block with a skip connection, a final unit without any
    activation, and a skip connection around all of it."""
    residual_input_0 = net
    for b in range(num_blocks):
        residual_input_b = net
        with tf1.variable_scope(f"res_block_{part}_{b}"):
            for i in (1, 2, 3):
                net = residual_block(net, _ARCH_PARAM_N, 2, f"{part}_{b}_{i}", is_training,
                                     reg_factor)
        net = net + residual_input_b
    net = residual_block(net, _ARCH_PARAM_N, 2, final_scope, is_training, reg_factor,
                         activation_fn=None)
    return net + residual_input_0


class CVPRAutoencoder:
    """autoencoder.CVPR: encoder (with importance map and quantizer) and decoder; calling
    encode/decode again reuses the variables (the test branch)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._reuse_enc = False
        self._reuse_dec = False
        self.centers: tf.Variable | None = None

    def encode(self, x: tf.Tensor, is_training: bool) -> EncoderOutput:
        """x: NHWC float32, 0..255; the outputs are NCHW."""
        cfg = self.config
        reg_factor = cfg.regularization_factor
        with tf1.variable_scope(SCOPE_AE_ENC, reuse=self._reuse_enc):
            if self.centers is None:
                self._create_centers()
            self._reuse_enc = True
            with tf1.name_scope("normalize"):
                net = (x - _MEAN) / np.sqrt(_VAR + 1e-10)
            net = conv2d(net, _ARCH_PARAM_N // 2, 5, 2, "h1", is_training, reg_factor)
            net = conv2d(net, _ARCH_PARAM_N, 5, 2, "h2", is_training, reg_factor)
            net = _residual_stack(net, "enc", "res_block_enc_final", cfg.arch_param_B,
                                  is_training, reg_factor)
            num_channels = cfg.num_chan_bn + 1  # + the importance map channel
            net = conv2d(net, num_channels, 5, 2, "to_bn", is_training, reg_factor,
                         activation_fn=None)
            # the original is NCHW from here on (heatmap, mask, quantizer)
            bottleneck = _to_nchw(net)
            heatmap = self._get_heatmap3D(bottleneck)
            with tf1.name_scope("heatmap_mask"):
                z = heatmap * bottleneck[:, 1:, ...]
            with tf1.name_scope("quantize"):
                qsoft, qhard, symbols = _quantize1d(z, self.centers, sigma=1)
            with tf1.name_scope("qbar"):
                qbar = qsoft + tf1.stop_gradient(qhard - qsoft)
            return EncoderOutput(qbar, qhard, symbols, z, heatmap, bottleneck, qsoft)

    def _create_centers(self) -> None:
        cfg = self.config
        minval, maxval = map(int, cfg.centers_initial_range)
        self.centers = tf1.get_variable(
            "centers", shape=(cfg.num_centers,), dtype=tf.float32,
            initializer=tf1.random_uniform_initializer(minval=minval, maxval=maxval, seed=666))
        if cfg.regularization_factor_centers != 0:
            with tf1.name_scope("centers/Regularizer"):
                factor = tf1.to_float(cfg.regularization_factor_centers)
                centers_reg = tf1.identity(factor * tf1.nn.l2_loss(self.centers),
                                           name="l2_regularizer")
                tf1.losses.add_loss(centers_reg, tf1.GraphKeys.REGULARIZATION_LOSSES)

    @staticmethod
    def _get_heatmap3D(bottleneck: tf.Tensor) -> tf.Tensor:
        """bottleneck NCHW (channel 0: importance map) -> mask (N, C-1, H, W)."""
        with tf1.name_scope("heatmap"):
            num_channels = int(bottleneck.shape[1]) - 1
            heatmap2D = tf1.nn.sigmoid(bottleneck[:, 0, :, :]) * num_channels
            channel_index = tf1.range(num_channels, dtype=tf.float32)
            heatmap = tf1.expand_dims(heatmap2D, 1)
            channel_index = tf1.reshape(channel_index, (num_channels, 1, 1))
            return tf1.maximum(tf1.minimum(heatmap - channel_index, 1), 0, name="heatmap3D")

    def decode(self, q_nchw: tf.Tensor, is_training: bool) -> tf.Tensor:
        """-> x_out NHWC, clipped to 0..255."""
        reg_factor = self.config.regularization_factor
        with tf1.variable_scope(SCOPE_AE_DEC, reuse=self._reuse_dec):
            self._reuse_dec = True
            net = _to_nhwc(q_nchw)
            net = conv2d_transpose(net, _ARCH_PARAM_N, 3, 2, "from_bn", is_training, reg_factor)
            net = _residual_stack(net, "dec", "dec_after_res", self.config.arch_param_B,
                                  is_training, reg_factor)
            net = conv2d_transpose(net, _ARCH_PARAM_N // 2, 5, 2, "h12", is_training, reg_factor)
            net = conv2d_transpose(net, 3, 5, 2, "h13", is_training, reg_factor,
                                   activation_fn=None)
            with tf1.name_scope("denormalize"):
                net = (net * np.sqrt(_VAR + 1e-10)) + _MEAN
            return tf1.clip_by_value(net, 0, 255, name="clip")


# --------------------------------------------------------------------------- probclass


def _conv3d(name: str, x: tf.Tensor, num_outputs: int, filter_shape: tuple[int, int, int],
            filter_mask: tf.Tensor | None, activation_fn: Activation = tf1.nn.relu) -> tf.Tensor:
    """probclass.conv3d: masked (causal) 'VALID' conv3d with bias, NDHWC."""
    num_inputs = x.shape.as_list()[-1]
    weights_shape = tuple(filter_shape) + (num_inputs, num_outputs)
    suffix = "_mask" if filter_mask is not None else ""
    with tf1.variable_scope(f"conv3d_{name}{suffix}"):
        weights = tf1.get_variable("weights", shape=weights_shape, dtype=tf.float32,
                                   initializer=_SLIM_WEIGHTS_INIT())
        if filter_mask is not None:
            weights = weights * filter_mask
        biases = tf1.get_variable("biases", shape=(num_outputs,), dtype=tf.float32,
                                  initializer=tf1.zeros_initializer())
        out = tf1.nn.conv3d(x, weights, [1, 1, 1, 1, 1], "VALID", name="conv3d")
        out = tf1.nn.bias_add(out, biases, name="bias3d")
        return activation_fn(out) if activation_fn is not None else out


class ResShallowProbclass:
    """probclass.ProbClassNetwork for arch res_shallow: a 3D-masked conv net that predicts a
    distribution over the centers for each bottleneck symbol from its causal context."""

    SCOPE = "probclass3d"
    _NUM_RESIDUAL = 1

    def __init__(self, config: Config, num_centers: int) -> None:
        self.config = config
        self.num_centers = num_centers
        self._reuse = False
        self._first_mask: tf.Tensor | None = None
        self._other_mask: tf.Tensor | None = None

    @property
    def filter_shape(self) -> tuple[int, int, int]:
        kernel_size = self.config.kernel_size
        return kernel_size // 2 + 1, kernel_size, kernel_size

    def context_size(self) -> int:
        num_layers = 2 + self._NUM_RESIDUAL * 2
        return num_layers * (self.config.kernel_size - 1) + 1

    def _mask(self, first: bool) -> tf.Tensor:
        """Zero the filter taps at and after the current symbol (the first layer may not see
        the symbol itself; later layers may)."""
        half = self.config.kernel_size // 2
        mask = np.ones(self.filter_shape, dtype=np.float32)
        mask[-1, half, (half if first else half + 1):] = 0
        mask[-1, half + 1:, :] = 0
        return tf1.stop_gradient(tf1.constant(mask[..., None, None]))

    def variables(self) -> list[tf.Variable]:
        return tf1.trainable_variables(self.SCOPE)

    def bitcost(self, q: tf.Tensor, target_symbols: tf.Tensor, pad_value: tf.Tensor
                ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """q, target_symbols: NCHW -> (bits per symbol NCHW, logits NCHWL, padded input
        N(C+p)(H+2p)(W+2p)1)."""
        with tf1.variable_scope(self.SCOPE, reuse=self._reuse):
            if self._first_mask is None:
                with tf1.name_scope("first_mask"):
                    self._first_mask = self._mask(first=True)
                with tf1.name_scope("other_mask"):
                    self._other_mask = self._mask(first=False)
            self._reuse = True
            targets_one_hot = tf1.one_hot(target_symbols, depth=self.num_centers, axis=-1,
                                          name="target_symbols")
            context_size = self.context_size()
            with tf1.name_scope(f"pad_cs{context_size}"):
                pad = context_size // 2
                q_pad = tf1.pad(q, [[0, 0], [pad, 0], [pad, pad], [pad, pad]],
                                constant_values=pad_value)
            with tf1.variable_scope("logits"):
                q_pad = tf1.expand_dims(q_pad, -1, name="NCHWT")
                logits = self._logits(q_pad)
            with tf1.name_scope("bitcost"):
                log_base_change_factor = tf1.constant(np.log2(np.e), dtype=tf.float32)
                bitcost = tf1.nn.softmax_cross_entropy_with_logits(
                    logits=logits, labels=targets_one_hot) * log_base_change_factor
            return bitcost, logits, q_pad

    def _residual_block(self, x: tf.Tensor, name: str) -> tf.Tensor:
        num_outputs = x.shape.as_list()[-1]
        residual_input = x
        activation_fn = tf1.nn.relu
        with tf1.variable_scope(name, "res"):
            for conv_i in range(2):
                if conv_i == 1:
                    activation_fn = None
                x = _conv3d(f"conv{conv_i + 1}", x, num_outputs, self.filter_shape,
                            self._other_mask, activation_fn=activation_fn)
            # two 'VALID' convs shrink the input by 2 in front along D and on each side of H, W
            return x + residual_input[..., 2:, 2:-2, 2:-2, :]

    def _logits(self, q: tf.Tensor) -> tf.Tensor:
        net = _conv3d("conv0", q, self.config.arch_param__k, self.filter_shape, self._first_mask)
        for res_i in range(self._NUM_RESIDUAL):
            net = self._residual_block(net, name=f"res{res_i + 1}")
        # the original's conv3d helper defaults to a ReLU, also on the logits
        return _conv3d("conv2", net, self.num_centers, self.filter_shape, self._other_mask)


# --------------------------------------------------------------------------- MS-SSIM (ms_ssim.py)


def _gauss_kernel(sigma: float, size: int) -> np.ndarray:
    half = size // 2
    x = np.arange(-half, half + 1, 1.0)  # 2*(size//2)+1 taps (an extra one for even sizes)
    g = np.exp(-x * x / (2 * sigma * sigma))
    return g / np.sum(np.abs(g))


def _reflect_pad_blur(image: tf.Tensor, kernel: np.ndarray, pad_before: int, pad_after: int
                      ) -> tf.Tensor:
    """Reflect-pad H and W, then convolve each channel with the separable kernel ('VALID')."""
    image = tf1.pad(image, [[0, 0], [pad_before, pad_after], [pad_before, pad_after], [0, 0]],
                    mode="REFLECT")
    outputs = []
    for channel in range(3):
        data_c = image[:, :, :, channel:(channel + 1)]
        data_c = tf1.nn.conv2d(data_c, kernel[None, :, None, None], [1, 1, 1, 1], "VALID")
        data_c = tf1.nn.conv2d(data_c, kernel[:, None, None, None], [1, 1, 1, 1], "VALID")
        outputs.append(data_c)
    return tf1.concat(outputs, axis=3)


def _gaussian_blur(image: tf.Tensor, sigma: float, size: int) -> tf.Tensor:
    kernel = _gauss_kernel(sigma, size)
    total_pad = max(kernel.shape[0] - image.shape.as_list()[2], 0)
    # sic: the original writes `total_pad + 1 // 2` (= total_pad)
    return _reflect_pad_blur(image, kernel, total_pad, total_pad // 2)


def _downsample_blur(image: tf.Tensor, kernel: np.ndarray) -> tf.Tensor:
    return _reflect_pad_blur(image, kernel, (kernel.shape[0] - 1) // 2, kernel.shape[0] // 2)


def _ssim_for_multiscale(img1: tf.Tensor, img2: tf.Tensor, max_val: float = 255,
                         filter_size: int = 11, filter_sigma: float = 1.5, k1: float = 0.01,
                         k2: float = 0.03) -> tuple[tf.Tensor, tf.Tensor]:
    """-> (mean SSIM, mean contrast-structure term) at one scale."""
    _, height, width, _ = img1.shape.as_list()
    size = min(filter_size, height, width)
    sigma = size * filter_sigma / filter_size
    mu1 = _gaussian_blur(img1, sigma, size)
    mu2 = _gaussian_blur(img2, sigma, size)
    sigma11 = _gaussian_blur(img1 * img1, sigma, size)
    sigma22 = _gaussian_blur(img2 * img2, sigma, size)
    sigma12 = _gaussian_blur(img1 * img2, sigma, size)
    mu11 = mu1 * mu1
    mu22 = mu2 * mu2
    mu12 = mu1 * mu2
    sigma11 -= mu11
    sigma22 -= mu22
    sigma12 -= mu12
    c1 = (k1 * max_val) ** 2
    c2 = (k2 * max_val) ** 2
    v1 = 2.0 * sigma12 + c2
    v2 = sigma11 + sigma22 + c2
    ssim = (((2.0 * mu12 + c1) * v1) / ((mu11 + mu22 + c1) * v2))
    return tf1.reduce_mean(ssim), tf1.reduce_mean(v1 / v2)


def multiscale_ssim(img1: tf.Tensor, img2: tf.Tensor) -> tf.Tensor:
    """ms_ssim.MultiScaleSSIM for NHWC inputs (the original transposes its NCHW inputs first)."""
    if not (img1.shape.is_fully_defined() and img1.shape == img2.shape):
        raise ValueError(f"MS-SSIM needs equal static shapes, got {img1.shape}, {img2.shape}")
    with tf1.name_scope("MS-SSIM"):
        weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
        levels = weights.size
        weights = tf1.convert_to_tensor(weights, dtype=tf.float32)
        downsample_filter = np.ones((2,)) / 2.0
        im1, im2 = img1, img2
        mssim, mcs = [], []
        for _ in range(levels):
            ssim, cs = _ssim_for_multiscale(im1, im2)
            mssim.append(ssim)
            mcs.append(cs)
            filtered = [_downsample_blur(im, downsample_filter) for im in (im1, im2)]
            im1, im2 = (im[:, ::2, ::2, :] for im in filtered)
        mcs = tf1.stack(mcs, axis=0)
        mssim = tf1.stack(mssim, axis=0)
        return (tf1.reduce_prod(mcs[0:levels - 1] ** weights[0:levels - 1])
                * (mssim[levels - 1] ** weights[levels - 1]))


# --------------------------------------------------------------------------- distortions, loss


def _log10(x: tf.Tensor) -> tf.Tensor:
    return tf1.log(x) / tf1.log(tf1.constant(10, dtype=x.dtype))


def _mse_per_image(x: tf.Tensor, x_out: tf.Tensor) -> tf.Tensor:
    """On int32 casts, as the original (which truncates the decoder output)."""
    x, x_out = tf1.cast(x, tf.int32), tf1.cast(x_out, tf.int32)
    return tf1.reduce_mean(tf1.to_float(tf1.square(x_out - x)), axis=[1, 2, 3])


def distortions(cfg: Config, x: tf.Tensor, x_out: tf.Tensor, is_training: bool
                ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """train.Distortions for distortion_to_minimize == 'ms_ssim' -> (mse, psnr, ms_ssim,
    d_loss_scaled)."""
    with tf1.name_scope("distortions_train" if is_training else "distortions_test"):
        mse = tf1.reduce_mean(_mse_per_image(x, x_out), name="mse")
        psnr = tf1.reduce_mean(10 * _log10(255.0 * 255.0 / _mse_per_image(x, x_out)),
                               name="psnr")
        with tf1.name_scope("mean_MS_SSIM"):
            ms_ssim = multiscale_ssim(x, x_out)
        with tf1.name_scope("distortion_to_minimize"):
            d_loss_scaled = cfg.K_ms_ssim * (1 - ms_ssim)
        return mse, psnr, ms_ssim, d_loss_scaled


def bitcost_to_bpp(bitcost: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    with tf1.name_scope("bitcost_to_bpp"):
        num_bits = tf1.reduce_sum(bitcost, name="num_bits")
        num_pixels = tf1.reduce_prod(tf1.shape(x)) / 3  # int32 / int -> float64, as original
        return num_bits / tf1.to_float(num_pixels)


def entropy_losses(cfg: Config, bitcost: tf.Tensor, heatmap: tf.Tensor) -> dict[str, tf.Tensor]:
    """The rate terms of train.get_loss: H_real, H_mask, H_soft and pc_loss."""
    bitcost_masked = bitcost * heatmap
    H_real = tf1.reduce_mean(bitcost, name="H_real")
    H_mask = tf1.reduce_mean(bitcost_masked, name="H_mask")
    H_soft = 0.5 * (H_mask + H_real)
    H_target = tf1.constant(cfg.H_target, tf.float32, name="H_target")
    beta = tf1.constant(cfg.beta, tf.float32, name="beta")
    pc_loss = beta * tf1.maximum(H_soft - H_target, 0)
    return dict(H_real=H_real, H_mask=H_mask, H_soft=H_soft, pc_loss=pc_loss)


def get_loss(cfg: Config, bitcost: tf.Tensor, heatmap: tf.Tensor) -> dict[str, tf.Tensor]:
    """train.get_loss without the distortion: the rate terms and the regularization losses."""
    with tf1.name_scope("losses"):
        losses = entropy_losses(cfg, bitcost, heatmap)
        with tf1.name_scope("regularization_losses"):
            reg_probclass = 0  # pc regularization_factor is None
            reg_enc = tf1.losses.get_regularization_loss(scope=SCOPE_AE_ENC)
            reg_dec = tf1.losses.get_regularization_loss(scope=SCOPE_AE_DEC)
            reg_loss = reg_probclass + reg_enc + reg_dec
        return dict(losses, reg_enc_dec=reg_enc + reg_dec, reg_loss=reg_loss)


# --------------------------------------------------------------------------- train op

IMAGENET_TRAIN_IMAGES = 1281167  # the original's epochs (for the lr schedule) are ImageNet's


def _learning_rate(cfg: Config, name: str, global_step: tf.Variable, batch_size: int,
                   num_images: int) -> tf.Tensor:
    """training_helpers.create_learning_rate_tensor for lr_schedule DECAY."""
    with tf1.name_scope(name):
        lr = tf1.constant(cfg.lr_initial, tf.float32, name="lr_initial")
        num_itr_per_epoch = num_images // batch_size  # NUM_CROPS_PER_IMG = 1
        return tf1.train.exponential_decay(
            lr, global_step, decay_steps=num_itr_per_epoch * cfg.lr_schedule_decay_interval,
            decay_rate=cfg.lr_schedule_decay_rate, staircase=cfg.lr_schedule_decay_staircase)


def get_train_op(ae_cfg: Config, pc_cfg: Config, total_loss: tf.Tensor,
                 vars_probclass: list[tf.Variable], batch_size: int,
                 num_images: int = IMAGENET_TRAIN_IMAGES) -> dict[str, Any]:
    """train.get_train_op: two Adam optimizers (Adam_AE for the autoencoder, Adam_PC for the
    probclass) on gradients taken after the BN update ops.
    -> dict(train_op, grads {variable name: gradient}, lr_ae, lr_pc, global_step)."""
    global_step = tf1.train.get_or_create_global_step()
    lr_ae = _learning_rate(ae_cfg, "lr_ae", global_step, batch_size, num_images)
    opt_ae = tf1.train.AdamOptimizer(learning_rate=lr_ae, name="Adam_AE")
    lr_pc = _learning_rate(pc_cfg, "lr_pc", global_step, batch_size, num_images)
    opt_pc = tf1.train.AdamOptimizer(learning_rate=lr_pc, name="Adam_PC")

    # fjcommon.tf_helpers.create_train_op_with_different_lrs
    trainable_vars = tf1.trainable_variables()
    vars_default = [v for v in trainable_vars if v not in vars_probclass]
    assert len(trainable_vars) == len(vars_default) + len(vars_probclass)
    update_ops = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
    all_vars_sorted = vars_default + list(vars_probclass)
    with tf1.control_dependencies(update_ops):
        grads = tf1.gradients(total_loss, all_vars_sorted)
    num_default = len(vars_default)
    train_steps = [
        opt_ae.apply_gradients(zip(grads[:num_default], vars_default, strict=True),
                               global_step=global_step),
        opt_pc.apply_gradients(zip(grads[num_default:], vars_probclass, strict=True),
                               global_step=None)]
    return dict(train_op=tf1.group(*train_steps),
                grads={v.op.name: g for v, g in zip(all_vars_sorted, grads, strict=True)},
                lr_ae=lr_ae, lr_pc=lr_pc, global_step=global_step)


# --------------------------------------------------------------------------- whole graph


def build_branch(ae: CVPRAutoencoder, pc: ResShallowProbclass, ae_cfg: Config, x: tf.Tensor,
                 is_training: bool) -> dict[str, tf.Tensor]:
    """The training branch (is_training=True: the decoder and probclass get qbar) or the test
    branch (False: qhard), as train.train(). x: NHWC. The bottleneck-side tensors are NCHW."""
    enc = ae.encode(x, is_training=is_training)
    x_out = ae.decode(enc.qbar if is_training else enc.qhard, is_training=is_training)
    pc_in = tf1.stop_gradient(enc.qbar) if is_training else enc.qhard
    bitcost, logits, q_pad = pc.bitcost(pc_in, enc.symbols, pad_value=ae.centers[0])
    bpp = bitcost_to_bpp(bitcost, x)
    mse, psnr, ms_ssim, d_loss_scaled = distortions(ae_cfg, x, x_out, is_training)
    heatmap2D = tf1.reduce_sum(enc.heatmap, 1)
    return dict(bottleneck=enc.bottleneck, heatmap3D=enc.heatmap, heatmap2D=heatmap2D,
                z_masked=enc.z, qsoft=enc.qsoft, qhard=enc.qhard, qbar=enc.qbar,
                symbols=enc.symbols, pc_in_padded=q_pad, logits=logits, bc=bitcost, x_out=x_out,
                bpp=bpp, mse=mse, psnr=psnr, ms_ssim=ms_ssim, d_loss_scaled=d_loss_scaled)


def build_train_graph(ae_cfg: Config, pc_cfg: Config, x: tf.Tensor,
                      test_x: tf.Tensor | None = None) -> dict[str, Any]:
    """The graph of the original train.py. x: NHWC float32 training batch (static batch size).

    Returns the training branch's tensors (see build_branch) with the loss terms, total_loss,
    train_op, grads, lr_ae, lr_pc and global_step; with test_x also 'test': the test branch's
    tensors with the training loss formula applied to them (as the fixture's test_* terms)."""
    ae = CVPRAutoencoder(ae_cfg)
    pc = ResShallowProbclass(pc_cfg, num_centers=ae_cfg.num_centers)
    tensors = build_branch(ae, pc, ae_cfg, x, is_training=True)
    losses = get_loss(ae_cfg, tensors["bc"], tensors["heatmap3D"])
    total_loss = tensors["d_loss_scaled"] + losses["pc_loss"] + losses["reg_loss"]
    tensors.update(losses, total_loss=total_loss)
    tensors.update(get_train_op(ae_cfg, pc_cfg, total_loss, pc.variables(), int(x.shape[0])))
    if test_x is not None:
        with tf1.name_scope("test"):
            test = build_branch(ae, pc, ae_cfg, test_x, is_training=False)
            with tf1.name_scope("test_losses"):
                test.update(entropy_losses(ae_cfg, test["bc"], test["heatmap3D"]))
                test.update(reg_enc_dec=losses["reg_enc_dec"],
                            total_loss=test["d_loss_scaled"] + test["pc_loss"]
                            + losses["reg_loss"])
        tensors["test"] = test
    return tensors


def enable_graph_mode() -> None:
    """TF1 graph mode, as the original ran; quiet deprecation warnings."""
    tf1.disable_eager_execution()
    tf1.logging.set_verbosity(tf1.logging.ERROR)


def make_session(intra_op_threads: int, inter_op_threads: int) -> tf1.Session:
    """A session as fjcommon's create_session makes it, with the given thread pools."""
    config = tf1.ConfigProto(intra_op_parallelism_threads=intra_op_threads,
                             inter_op_parallelism_threads=inter_op_threads,
                             allow_soft_placement=True)
    return tf1.Session(config=config)
