"""The whole codec: autoencoder + quantizer + probability classifier, built from the configs,
and its compressed files: `compress(image) -> bytes`, `decompress(bytes) -> image`."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from imgcomp.base.image_files import ImageLike, read_image
from imgcomp.entropy_coding.bitstream import (
    BitstreamError,
    Header,
    model_fingerprint,
    pack,
    pixel_limit,
    unpack,
)
from imgcomp.entropy_coding.integer_model import IntegerContextModel
from imgcomp.entropy_coding.range_coding import decode_symbols, encode_symbols
from imgcomp.nets import row_bands, tiling
from imgcomp.nets.autoencoder import Autoencoder, pad_to_multiple
from imgcomp.nets.probclass import ProbClassifier
from imgcomp.nets.quantizer import Quantizer
from imgcomp.nets.shapes import SUBSAMPLING

# Latent positions per side of the tiles that coding runs the autoencoder on (see `tiles`).
TILE_SIZE = 128


class CodecOutput(NamedTuple):
    x_hat: Tensor  # (N, 3, H, W) reconstruction in [0, 255]
    symbols: Tensor  # (N, C, h, w) centre indices
    bitcost: Tensor  # (N, C, h, w) bits per symbol under the probability classifier
    mask: Tensor | None  # (N, C, h, w) importance mask, None without heatmap


class ImageCodec(nn.Module):
    """forward(x) runs the training/eval graph: encode, quantize, decode, and bit costs.

    Training decodes qbar (hard forward, soft gradient); eval mode decodes qhard. The
    probability classifier sees the quantized volume with gradients stopped, as the original,
    and its padding, the first centre, is a constant (the original's tf.pad passes no gradient
    to its pad value either).

    Coding one image (eval mode only): `symbols` (image -> symbols), `reconstruct` (symbols
    -> uint8 image), `bits` (their float cross-entropy), `encode_symbols`/`decode_symbols`
    (symbols <-> file bytes), and `compress`/`decompress` combining them. val.py, the CLI
    and the Python API all code through these. Eval-mode forward computes the same: it
    decodes qhard, the dequantized symbols, and costs them with the same classifier.
    """

    def __init__(self, autoencoder: Autoencoder, quantizer: Quantizer,
                 probclass: ProbClassifier, use_centers_for_padding: bool = True,
                 output_uint8: str = "truncate") -> None:
        super().__init__()
        if output_uint8 not in ("truncate", "round"):
            raise ValueError(f"output_uint8 must be truncate or round, got {output_uint8!r}")
        self.autoencoder = autoencoder
        self.quantizer = quantizer
        self.probclass = probclass
        self.use_centers_for_padding = use_centers_for_padding
        self.output_uint8 = output_uint8
        self._coder: tuple[list, list, bytes, IntegerContextModel] | None = None  # coder()
        self.tile_size = TILE_SIZE

    @classmethod
    def from_configs(cls, ae_cfg, pc_cfg) -> ImageCodec:
        quantizer = Quantizer.from_config(ae_cfg)
        return cls(Autoencoder.from_config(ae_cfg), quantizer,
                   ProbClassifier.from_config(pc_cfg, quantizer.num_centers),
                   pc_cfg.use_centers_for_padding, ae_cfg.output_uint8)

    def to_uint8(self, x_hat: Tensor) -> Tensor:
        """A reconstruction in [0, 255] as uint8: truncated as the original's val.py casts
        it, or rounded to the nearest level."""
        if self.output_uint8 == "round":
            x_hat = x_hat.round()
        return x_hat.clamp(0, 255).to(torch.uint8)

    def pad_value(self) -> float:
        """Value of the padding around the symbol volume: centres[0] (or 0)."""
        return float(self.quantizer.centers[0].detach()) if self.use_centers_for_padding else 0.0

    def bitcost(self, qhard: Tensor, symbols: Tensor) -> Tensor:
        """(N, C, h, w) bits of each symbol under the probability classifier, given the
        quantized volume qhard (its centre values)."""
        logits = self.probclass(qhard.detach(), self.pad_value())
        # float32 even under bfloat16 autocast: a bit cost is a log of a softmax.
        return ProbClassifier.bitcost(logits.float(), symbols)

    def forward(self, x: Tensor) -> CodecOutput:
        z, mask = self.autoencoder.encode(x)
        q = self.quantizer(z)
        x_hat = self.autoencoder.decode(q.qbar if self.training else q.qhard)
        return CodecOutput(x_hat, q.symbols, self.bitcost(q.qhard, q.symbols), mask)

    # Coding one image.

    def _require_eval(self) -> None:
        if self.training:
            raise RuntimeError("coding needs eval mode (call .eval()): in training mode "
                               "BatchNorm would normalize with the image's own statistics")

    @property
    def device(self) -> torch.device:
        return self.quantizer.centers.device

    def tiles(self, height: int, width: int, network: str) -> list[tiling.Tile]:
        """The tiles that `symbols` (network "encoder") or `reconstruct` ("decoder") runs its
        network on, for a height x width latent grid: at most `tile_size` positions a side,
        with the network's halo."""
        halo = tiling.encoder_halo if network == "encoder" else tiling.decoder_halo
        module = getattr(self.autoencoder, network)
        return tiling.tiles(height, width, self.tile_size, halo(module, 0), halo(module, 1))

    @torch.no_grad()
    def symbols(self, image: np.ndarray) -> Tensor:
        """(C, h, w) uint8 symbols, on the CPU, of an H x W x 3 uint8 image (edge-padded to a
        multiple of 8), computed tile by tile (`tiles`)."""
        self._require_eval()
        image = np.asarray(image)
        h, w = -(-image.shape[0] // SUBSAMPLING), -(-image.shape[1] // SUBSAMPLING)
        symbols = torch.empty(self.autoencoder.num_channels, h, w, dtype=torch.uint8)
        for tile in self.tiles(h, w, "encoder"):
            crop = image[SUBSAMPLING * tile.crop_top:SUBSAMPLING * tile.crop_bottom,
                         SUBSAMPLING * tile.crop_left:SUBSAMPLING * tile.crop_right]
            x = torch.from_numpy(np.array(crop)).to(self.device)  # a copy: writable, contiguous
            x = pad_to_multiple(x.permute(2, 0, 1).unsqueeze(0).float())
            z, _ = self.autoencoder.encode(x.contiguous(memory_format=torch.channels_last))
            symbols[:, tile.top:tile.bottom, tile.left:tile.right] = (
                self.quantizer.symbols(z)[0][:, tile.inner()[0], tile.inner()[1]])
        return symbols

    @torch.no_grad()
    def reconstruct(self, symbols: Tensor, height: int, width: int) -> np.ndarray:
        """The height x width x 3 uint8 image decoded from (C, h, w) symbols, tile by tile
        (`tiles`), with the same pixels for any thread count (row_bands)."""
        self._require_eval()
        image = np.empty((height, width, 3), dtype=np.uint8)
        with row_bands.thread_count_independent():
            for tile in self.tiles(*symbols.shape[1:], "decoder"):
                crop = symbols[:, tile.crop_top:tile.crop_bottom, tile.crop_left:tile.crop_right]
                q = self.quantizer.dequantize(crop.to(self.device, torch.int64)).unsqueeze(0)
                x_hat = self.autoencoder.decode(q.contiguous(memory_format=torch.channels_last))
                rows, cols = tile.inner(SUBSAMPLING)
                top, left = SUBSAMPLING * tile.top, SUBSAMPLING * tile.left
                rows = slice(rows.start, rows.start + min(rows.stop - rows.start, height - top))
                cols = slice(cols.start, cols.start + min(cols.stop - cols.start, width - left))
                part = self.to_uint8(x_hat[0, :, rows, cols]).permute(1, 2, 0)
                image[top:top + part.shape[0], left:left + part.shape[1]] = part.cpu().numpy()
        return image

    @torch.no_grad()
    def bits(self, symbols: Tensor) -> float:
        """Cross-entropy in bits of (C, h, w) symbols under the float probability classifier
        (the rate of the loss and of val.py's bpp), summed over tiles of `tile_size`
        positions a side, each with the classifier's context around it."""
        pad = self.probclass.context_pad
        total = 0.0
        for tile in tiling.tiles(*symbols.shape[1:], self.tile_size, (pad, pad), (pad, pad)):
            crop = symbols[:, tile.crop_top:tile.crop_bottom, tile.crop_left:tile.crop_right]
            crop = crop.to(self.device, torch.int64).unsqueeze(0)
            cost = self.bitcost(self.quantizer.dequantize(crop), crop)[0]
            total += float(cost[:, tile.inner()[0], tile.inner()[1]].double().sum())
        return total

    def coder(self) -> tuple[bytes, IntegerContextModel]:
        """The fingerprint of the current weights and the integer context model made from
        them, so a model trained or loaded anew never codes with stale integer weights. Both
        are cached while no weight tensor is replaced or changed in place (torch counts every
        in-place change in a tensor's version): hashing the weights costs ~30 ms per call."""
        # The tensors themselves are kept: a replaced one is then never mistaken for a new one
        # that got its address.
        tensors = list(self.state_dict(keep_vars=True).values())
        versions = [t._version for t in tensors]
        if (self._coder is None or len(tensors) != len(self._coder[0])
                or any(a is not b for a, b in zip(tensors, self._coder[0], strict=True))
                or versions != self._coder[1]):
            self._coder = (tensors, versions, model_fingerprint(self), IntegerContextModel(
                self.probclass, self.quantizer.centers, self.pad_value()))
        return self._coder[2], self._coder[3]

    def encode_symbols(self, symbols: Tensor, height: int, width: int) -> tuple[bytes, float]:
        """(file bytes, cross-entropy bits of the symbols under the coding probabilities)."""
        fingerprint, context = self.coder()
        words, bits = encode_symbols(context, symbols)
        header = Header(fingerprint, height, width, tuple(symbols.shape), words.nbytes)
        return pack(header, words.astype("<u4").tobytes()), bits

    def decode_symbols(self, data: bytes, max_pixels: int | None = None
                       ) -> tuple[Header, Tensor]:
        """The header and the (C, h, w) symbols of a file; BitstreamError if undecodable, or
        if its image has more pixels than `bitstream.pixel_limit(max_pixels)`."""
        return self.decode_unpacked(*unpack(data, max_pixels))

    def decode_unpacked(self, header: Header, payload: bytes) -> tuple[Header, Tensor]:
        """decode_symbols for a file already parsed and checked by `bitstream.unpack` (its
        header and payload), so a caller that read the header need not parse it again."""
        fingerprint, context = self.coder()
        if header.fingerprint != fingerprint:
            raise BitstreamError(f"file was compressed with another model (fingerprint "
                                 f"{header.fingerprint.hex()}, this model is "
                                 f"{fingerprint.hex()})")
        num_channels = self.autoencoder.num_channels
        if header.latent_shape[0] != num_channels:
            raise BitstreamError(f"invalid header: {header.latent_shape[0]} channels, model "
                                 f"has {num_channels}")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        with _out_of_memory_as_bitstream_error(header):
            symbols = decode_symbols(context, words, header.latent_shape)
        return header, symbols

    def compress(self, image: ImageLike) -> bytes:
        """Image (see `read_image`: path, PIL image, H x W x 3 uint8 array, ...) -> compressed
        bytes."""
        array = read_image(image, max_pixels=pixel_limit())
        return self.encode_symbols(self.symbols(array), *array.shape[:2])[0]

    def decompress(self, data: bytes, max_pixels: int | None = None) -> np.ndarray:
        """Compressed bytes -> H x W x 3 uint8 image; BitstreamError if undecodable, or if the
        image has more pixels than `bitstream.pixel_limit(max_pixels)` (a decompression-bomb
        guard; by default $IMGCOMP_MAX_PIXELS if set, else bitstream.MAX_PIXELS)."""
        return self.decompress_unpacked(*unpack(data, max_pixels))

    def decompress_unpacked(self, header: Header, payload: bytes) -> np.ndarray:
        """decompress for a file already parsed and checked by `bitstream.unpack` (its header
        and payload, e.g. read to pick the model by fingerprint)."""
        header, symbols = self.decode_unpacked(header, payload)
        with _out_of_memory_as_bitstream_error(header):
            return self.reconstruct(symbols, header.height, header.width)


@contextlib.contextmanager
def _out_of_memory_as_bitstream_error(header: Header):
    """Running out of memory on a file's image (numpy raises MemoryError, torch a RuntimeError
    or OutOfMemoryError) is a BitstreamError naming the image size; other errors pass."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not (isinstance(e, (MemoryError, torch.OutOfMemoryError))
                or "can't allocate memory" in str(e)):
            raise
        raise BitstreamError(f"out of memory decoding a {header.width}x{header.height} "
                             f"image") from e
