"""Validates graph.py (the original TensorFlow graph of Mentzer et al., fab-jul/imgcomp-cvpr,
re-implemented from reading its code) against the tensors the original code recorded in
`$IMGCOMP_SHARED/fixtures/original_tf1` (default `<repo>/../shared`; README.md there).

Checks that the graph has the original's variables (names, shapes, trainable flags), restores
the original's checkpoint into it, compares the forward tensors of the training branch (train_x,
is_training=True) and of the test branch (test_x, is_training=False), then runs one train op
step and compares the learning rates, loss terms, gradients, updated variables, BN moving stats,
Adam beta powers and global step. Exits with status 1 if any compared value exceeds its
tolerance (TOLERANCES below); the last line is a one-line summary.

Needs TensorFlow, which is not a dependency of the project:
    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0

    /tmp/tfvenv/bin/python original_tf/validate.py [--onednn 0|1] [--fixture DIR]

(Its session runs on one thread, as the fixture was made.)
"""

import argparse
import json
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURE = (Path(os.environ.get("IMGCOMP_SHARED", REPO.parent / "shared"))
           / "fixtures/original_tf1/0101_0001 cvpr@med cvpr@res_shallow")

# Tolerance of each group of comparisons. The error of a float tensor is max|diff| / max|ref|;
# the oracle ran the same TF kernels, so only the order of float sums may differ (Grappler's
# layout conversion, oneDNN). The error of an integer tensor is max|diff|: the symbols and the
# global step must be equal; the uint8 test image may differ by 1 where its float x_out, within
# tolerance, lies on the other side of an integer (the cast truncates). Gradients of the BN
# parameters go back through ~40 layers with the batch statistics of 2 images: oneDNN's kernels
# (--onednn 1) change some by ~1e-3; a wrong graph changes them by O(1). "after_step" is the error
# of the update, ||after - after_ref|| / ||after_ref - before||, as one Adam step moves weights
# with tiny gradients by a full step of either sign.
TOLERANCES = {
    "forward": 1e-4,
    "integer": 0,
    "image_uint8": 1,
    "step_scalars": 1e-4,
    "before_step": 0,
    "gradients": 1e-2,
    "after_step": 1e-2,
    "bn_after_step": 1e-4,
    "adam_after_step": 1e-6,
}

FORWARD_KEYS = ["bottleneck", "heatmap3D", "heatmap2D", "z_masked", "qsoft", "qhard", "qbar",
                "symbols", "pc_in_padded", "logits", "bc", "x_out", "bpp", "mse", "psnr",
                "ms_ssim", "d_loss_scaled", "H_real", "H_mask", "H_soft", "pc_loss",
                "reg_enc_dec", "total_loss"]
LOSS_KEYS = ["total_loss", "d_loss_scaled", "pc_loss", "H_real", "H_mask", "H_soft",
             "reg_enc_dec", "ms_ssim", "mse", "psnr", "bpp"]


@dataclass
class Comparison:
    name: str
    max_abs_diff: float
    error: float  # see TOLERANCES
    tolerance: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance

    @property
    def fraction_of_tolerance(self) -> float:
        if self.tolerance:
            return self.error / self.tolerance
        return 0.0 if self.error == 0 else float("inf")


def compare(name: str, mine: Any, ref: Any, group: str) -> Comparison:
    """max|diff| and the error of `mine` against the oracle's `ref` (see TOLERANCES); integer
    tensors are held to the "integer" tolerance unless their group is "image_uint8"."""
    mine, ref = np.asarray(mine), np.asarray(ref)
    if mine.shape != ref.shape:
        raise ValueError(f"{name}: shape {mine.shape}, the oracle's {ref.shape}")
    if mine.dtype.kind in "iu":
        diff = np.abs(mine.astype(np.int64) - ref.astype(np.int64))
        max_diff = float(diff.max(initial=0))
        tolerance = TOLERANCES["image_uint8" if group == "image_uint8" else "integer"]
        note = f"{np.count_nonzero(diff)} of {diff.size} elements differ" if max_diff else ""
        return Comparison(name, max_diff, max_diff, tolerance, note)
    diff = float(np.abs(mine.astype(np.float64) - ref.astype(np.float64)).max())
    return Comparison(name, diff, diff / (float(np.abs(ref).max()) or 1.0), TOLERANCES[group])


def compare_update(name: str, after: np.ndarray, after_ref: np.ndarray, before: np.ndarray
                   ) -> Comparison:
    """A variable after the step, measured against the size of the oracle's update."""
    after64, after_ref64 = after.astype(np.float64), after_ref.astype(np.float64)
    update_norm = float(np.linalg.norm(after_ref64 - before)) or 1.0
    return Comparison(name, float(np.abs(after64 - after_ref64).max()),
                      float(np.linalg.norm(after64 - after_ref64)) / update_norm,
                      TOLERANCES["after_step"])


def print_table(title: str, rows: list[Comparison], worst_only: int | None = None) -> None:
    """All rows, or only the `worst_only` largest errors."""
    if worst_only is not None:
        rows = sorted(rows, key=lambda r: -r.fraction_of_tolerance)[:worst_only]
        title += f" ({worst_only} worst)"
    print(f"\n== {title}")
    print(f"{'tensor':<80} {'max|diff|':>11} {'error':>9} {'tol':>7}")
    for r in rows:
        flag = "" if r.ok else "  EXCEEDS TOLERANCE"
        note = f"  ({r.note})" if r.note else ""
        print(f"{r.name:<80} {r.max_abs_diff:>11.4g} {r.error:>9.2g} {r.tolerance:>7.0e}"
              f"{note}{flag}")


def print_summary(groups: dict[str, list[Comparison]], onednn: bool) -> bool:
    """A line per group, then the one-line verdict; True if all values are within tolerance."""
    print("\n== summary (error: see TOLERANCES in validate.py)")
    for title, rows in groups.items():
        worst = max(rows, key=lambda r: r.fraction_of_tolerance)
        print(f"{title}: {len(rows)} values, max|diff| {max(r.max_abs_diff for r in rows):.3g}; "
              f"closest to its tolerance: {worst.name} error {worst.error:.2g} "
              f"(tol {worst.tolerance:.0e})")
    rows = [r for group in groups.values() for r in group]
    failed = [r for r in rows if not r.ok]
    setting = f"oneDNN {'on' if onednn else 'off'}"
    if failed:
        print(f"FAIL ({setting}): {len(failed)} of {len(rows)} compared values exceed their "
              "tolerance: " + ", ".join(f"{r.name} ({r.error:.2g} > {r.tolerance:.0e})"
                                        for r in failed[:8]) + (" ..." if len(failed) > 8 else ""))
        return False
    print(f"PASS ({setting}): all {len(rows)} compared values within tolerance")
    return True


def check_configs(meta: dict[str, Any], ae_cfg: dict[str, Any], pc_cfg: dict[str, Any]) -> None:
    """The repo's configs must equal the ones the oracle was made with."""
    skipped = []
    for part, config in (("ae", ae_cfg), ("pc", pc_cfg)):
        for key, value in meta[f"{part}_config"].items():
            if part == "pc" and key == "optimizer_momentum" and key not in config:
                skipped.append(key)  # not set by the port's pc configs; unused with ADAM
                continue
            mine = list(config[key]) if isinstance(config[key], tuple) else config[key]
            if mine != value:
                raise ValueError(f"{part} config {key}: {mine!r}, the oracle's {value!r}")
    print("configs: the repo's cvpr/med + cvpr/res_shallow == the oracle's (meta.json)"
          + (f"; not in the repo's pc config (unused with ADAM): {', '.join(skipped)}"
             if skipped else ""))


def check_variables(variables_txt: Path, my_vars: dict[str, Any], trainable: set[str]) -> None:
    """Names, shapes and trainable flags as in the original's graph (oracle/variables.txt:
    `name [d0, d1, ...] dtype trainable|non-trainable` a line)."""
    orig_shapes, orig_trainable = {}, set()
    for line in variables_txt.read_text().splitlines():
        name, rest = line.split(" ", 1)
        dims = rest.split("[", 1)[1].split("]", 1)[0].replace(",", " ").split()
        orig_shapes[name] = [int(d) for d in dims]
        if line.endswith(" trainable"):
            orig_trainable.add(name)
    if set(orig_shapes) != set(my_vars):
        raise ValueError(f"variables differ: {sorted(set(orig_shapes) ^ set(my_vars))}")
    for name, var in my_vars.items():
        if orig_shapes[name] != var.shape.as_list():
            raise ValueError(f"{name}: shape {var.shape}, the original's {orig_shapes[name]}")
    if orig_trainable != trainable:
        raise ValueError(f"trainable variables differ: {sorted(orig_trainable ^ trainable)}")
    print(f"variables: {len(my_vars)}, names/shapes/trainable flags identical to the original "
          f"graph ({len(orig_trainable)} trainable)")


def nchw_to_nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def nhwc_to_nchw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onednn", type=int, choices=(0, 1), default=0,
                        help="TF_ENABLE_ONEDNN_OPTS (the oracle: 0)")
    parser.add_argument("--fixture", type=Path, default=FIXTURE,
                        help="the original's log dir with ckpts/ and oracle/")
    return parser.parse_args()


# The functions below that use TensorFlow import graph (and with it TensorFlow) themselves: main()
# must set TensorFlow's environment variables before the first import.


def build_graph(ae_cfg: dict[str, Any], pc_cfg: dict[str, Any], train_shape: tuple[int, ...],
                test_shape: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training graph with the test branch, and MS-SSIM on a pair of training-sized images.
    -> (tensors (graph.build_train_graph's, plus 'msssim_pair'), placeholders by input name)."""
    import graph

    tf1 = graph.tf1
    tf1.set_random_seed(1234)  # as train.py; the restore overwrites all but the AE Adam slots
    placeholders = dict(train_x=tf1.placeholder(tf1.float32, train_shape, name="x_train"),
                        test_x=tf1.placeholder(tf1.float32, test_shape, name="x_test"))
    tensors = graph.build_train_graph(ae_cfg, pc_cfg, placeholders["train_x"],
                                      test_x=placeholders["test_x"])
    placeholders["msssim_pair_x2"] = tf1.placeholder(tf1.float32, train_shape)
    tensors["msssim_pair"] = graph.multiscale_ssim(placeholders["train_x"],
                                                   placeholders["msssim_pair_x2"])
    return tensors, placeholders


def restore_checkpoint(ckpt_dir: Path) -> tuple[Any, dict[str, Any]]:
    """A session with the original's checkpoint restored into the graph; the checkpoint leaves
    out the AE Adam slots (zeros at step 0), which are zero-initialized.
    -> (session, {variable name: variable})."""
    import graph

    tf1 = graph.tf1
    my_vars = {v.op.name: v for v in tf1.global_variables()}
    ckpt_path = str(ckpt_dir / "ckpt-0")
    ckpt_names = {name for name, _ in tf1.train.list_variables(ckpt_path)}
    with open(ckpt_dir / "var_names.pkl", "rb") as f:
        saved_names = {name.removesuffix(":0") for name in pickle.load(f)}
    if saved_names != ckpt_names:
        raise ValueError("var_names.pkl and the checkpoint name different variables")
    not_in_ckpt = sorted(set(my_vars) - ckpt_names)
    if not all("/Adam_AE" in name for name in not_in_ckpt):
        raise ValueError(f"missing from the checkpoint: {not_in_ckpt}")
    saver = tf1.train.Saver(var_list={n: v for n, v in my_vars.items() if n in ckpt_names})
    sess = graph.make_session(1, 1)
    sess.run(tf1.global_variables_initializer())
    saver.restore(sess, ckpt_path)
    print(f"restored {len(ckpt_names)} variables from the checkpoint; {len(not_in_ckpt)} AE Adam "
          "slots zero-initialized")
    return sess, my_vars


def compare_forward(sess: Any, tensors: dict[str, Any], placeholders: dict[str, Any],
                    io: Any, meta: dict[str, Any]) -> dict[str, list[Comparison]]:
    """Both branches' forward tensors and the MS-SSIM of the oracle's image pair (no update ops
    run: nothing fetched depends on them). -> comparisons by group title."""
    fetch = {f"train_{k}": tensors[k] for k in FORWARD_KEYS}
    fetch.update({f"test_{k}": tensors["test"][k] for k in FORWARD_KEYS})
    fetch["msssim_pair_value"] = tensors["msssim_pair"]
    out = sess.run(fetch, {ph: nchw_to_nhwc(io[name]) for name, ph in placeholders.items()})
    for branch in ("train", "test"):
        out[f"{branch}_x_out"] = nhwc_to_nchw(out[f"{branch}_x_out"])
    out["test_x_out_uint8"] = out["test_x_out"].astype(np.uint8)  # truncation, as the original
    groups = {}
    for branch, description in (("train", "train_x, is_training=True"),
                                ("test", "test_x, is_training=False")):
        rows = [compare(k, out[k], io[k], "forward") for k in (f"{branch}_{k}"
                                                               for k in FORWARD_KEYS)]
        if branch == "test":
            rows.append(compare("test_x_out_uint8", out["test_x_out_uint8"],
                                io["test_x_out_uint8"], "image_uint8"))
        groups[f"forward, {branch} branch ({description})"] = rows
    groups["MS-SSIM on (train_x, msssim_pair_x2)"] = [
        compare("msssim_pair_value", out["msssim_pair_value"], io["msssim_pair_value"],
                "forward")]
    for title, rows in groups.items():
        print_table(title, rows)
    print(f"scalars: train total_loss mine {out['train_total_loss']:.6f} oracle "
          f"{float(io['train_total_loss']):.6f} | ms_ssim {out['train_ms_ssim']:.8f} / "
          f"{float(io['train_ms_ssim']):.8f} | bpp {out['train_bpp']:.6f} / "
          f"{float(io['train_bpp']):.6f}")
    print(f"         test bpp mine {out['test_bpp']:.7f} oracle {float(io['test_bpp']):.7f} "
          f"(val.py: {meta['val_check']['val_bpp']:.7f})")
    return groups


def compare_train_step(sess: Any, tensors: dict[str, Any], train_x_ph: Any, my_vars: dict[str, Any],
                       train_x: np.ndarray, step: Any) -> dict[str, list[Comparison]]:
    """One run of the train op on train_x, from the restored values.
    -> comparisons by group title."""
    def names_under(prefix: str) -> list[str]:
        return sorted({k.split("/", 1)[1] for k in step.files if k.startswith(prefix + "/")})

    step_vars, bn_names, adam_names = (names_under(p)
                                       for p in ("before", "bn_before", "adam_before"))
    print(f"\nstep: {len(step_vars)} stored trainable variables, {len(bn_names)} BN moving "
          f"stats, {len(adam_names)} beta powers")
    before = sess.run({n: my_vars[n] for n in step_vars + bn_names})
    groups = {"restored values before the step": (
        [compare(f"before/{n}", before[n], step[f"before/{n}"], "before_step")
         for n in step_vars]
        + [compare(f"bn_before/{n}", before[n], step[f"bn_before/{n}"], "before_step")
           for n in bn_names])}

    step_fetch = {f"grad/{n}": tensors["grads"][n] for n in step_vars}
    step_fetch.update({f"loss/{k}": tensors[k] for k in LOSS_KEYS})
    step_fetch.update(lr_ae=tensors["lr_ae"], lr_pc=tensors["lr_pc"],
                      global_step_before=tensors["global_step"])
    step_out, _ = sess.run([step_fetch, tensors["train_op"]], {train_x_ph: train_x})
    after = sess.run({n: my_vars[n] for n in step_vars + bn_names + adam_names})
    global_step_after = sess.run(tensors["global_step"])
    groups["train step: learning rates, loss terms (fetched in the train-op run), global step"] = (
        [compare(k, step_out[k], step[k], "step_scalars")
         for k in ["lr_ae", "lr_pc"] + [f"loss/{k}" for k in LOSS_KEYS]]
        + [compare("global_step_before", step_out["global_step_before"],
                   step["global_step_before"], "before_step"),
           compare("global_step_after", global_step_after, step["global_step_after"],
                   "before_step")])
    groups["gradients"] = [compare(f"grad/{n}", step_out[f"grad/{n}"], step[f"grad/{n}"],
                                   "gradients") for n in step_vars]
    groups["variables after the step (error: relative to the size of the update)"] = [
        compare_update(f"after/{n}", after[n], step[f"after/{n}"], step[f"before/{n}"])
        for n in step_vars]
    groups["BN moving stats after the step"] = [
        compare(f"bn_after/{n}", after[n], step[f"bn_after/{n}"], "bn_after_step")
        for n in bn_names]
    groups["Adam beta powers after the step"] = [
        compare(f"adam_after/{n}", after[n], step[f"adam_after/{n}"], "adam_after_step")
        for n in adam_names]
    for title, rows in groups.items():
        # the many per-variable groups: only their worst rows
        print_table(title, rows, worst_only=6 if len(rows) > 20 else None)
    return groups


def main() -> int:
    args = parse_args()
    # TensorFlow reads these when first imported (graph imports it): set them before that
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = str(args.onednn)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import graph

    graph.enable_graph_mode()
    ckpt_dir, oracle_dir = args.fixture / "ckpts", args.fixture / "oracle"
    io = np.load(oracle_dir / "io.npz")
    step = np.load(oracle_dir / "step.npz")
    meta = json.loads((oracle_dir / "meta.json").read_text())
    ae_cfg, pc_cfg = graph.load_configs()
    check_configs(meta, ae_cfg, pc_cfg)

    tensors, placeholders = build_graph(ae_cfg, pc_cfg, nchw_to_nhwc(io["train_x"]).shape,
                                        nchw_to_nhwc(io["test_x"]).shape)
    tf1 = graph.tf1
    check_variables(oracle_dir / "variables.txt",
                    {v.op.name: v for v in tf1.global_variables()},
                    {v.op.name for v in tf1.trainable_variables()})
    sess, my_vars = restore_checkpoint(ckpt_dir)
    if not np.array_equal(sess.run(my_vars["autoencoder/encoder/centers"]), io["centers"]):
        raise ValueError("the restored centers differ from the oracle's")

    groups = compare_forward(sess, tensors, placeholders, io, meta)
    groups.update(compare_train_step(sess, tensors, placeholders["train_x"], my_vars,
                                     nchw_to_nhwc(io["train_x"]), step))
    return 0 if print_summary(groups, onednn=bool(args.onednn)) else 1


if __name__ == "__main__":
    sys.exit(main())
