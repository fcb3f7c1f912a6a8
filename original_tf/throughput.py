"""Training throughput of the ORIGINAL TensorFlow graph of Mentzer et al. (fab-jul/imgcomp-cvpr,
code/train.py) for ae cvpr/med + pc cvpr/res_shallow on CPU: the reference point for
bench/train_throughput.py.

The graph is graph.py next to this file: a re-implementation of the original's TF1 graph written
from reading its code, validated against the tensors the original recorded (validate.py). Needs
TensorFlow, which is not a dependency of the project:
    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0

    /tmp/tfvenv/bin/python original_tf/throughput.py [--batch B] [--crop C] [--steps 3]
        [--threads N] [--inter-threads 1] [--onednn 0|1]

Mirrors bench/train_throughput.py: one warm-up step, then `steps` timed train steps
(sess.run([train_op, global_step]), as the original's train loop: forward, MS-SSIM and loss,
backward, BN moving-average updates, both Adam optimizers), each on its own pre-generated batch
of random uint8-valued float32 crops (values 0..255, as the original's input pipeline yields
them; fed through a placeholder instead of the queue-based input pipeline). Variables are freshly
initialized as train.py does (seed 1234). Prints s/step, img/s and this process's peak RSS;
last line: img_s=X s_step=Y peak_rss_gb=Z.
"""

import argparse
import os
import resource
import time

import numpy as np


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, help="default: the config's batch_size")
    parser.add_argument("--crop", type=int, help="default: the config's crop_size")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="intra-op threads (and OMP_NUM_THREADS); default: all cores, "
                             "as bench/train_throughput.py")
    parser.add_argument("--inter-threads", type=int, default=1,
                        help="inter-op threads (default 1)")
    parser.add_argument("--onednn", type=int, choices=(0, 1), default=None,
                        help="set TF_ENABLE_ONEDNN_OPTS before importing TF (default: leave it "
                             "unset, i.e. TF's default, which is ON for this x86 build)")
    args = parser.parse_args()
    if args.crop is not None and args.crop % 8:
        parser.error("--crop must be a multiple of 8")
    return args


def main() -> None:
    args = parse_args()
    # TensorFlow reads these when first imported (graph imports it too): set them before that
    if args.onednn is not None:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = str(args.onednn)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the session sets TF's own pools
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import graph
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port

    tf1 = graph.tf1
    graph.enable_graph_mode()
    ae_cfg, pc_cfg = graph.load_configs()
    batch, crop = args.batch or ae_cfg.batch_size, args.crop or ae_cfg.crop_size[0]
    onednn = _pywrap_util_port.IsMklEnabled()
    print(f"tensorflow {tf.__version__}, oneDNN opts {'ON' if onednn else 'OFF'} "
          f"(TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', '<unset>')}), "
          f"intra-op threads {args.threads}, inter-op threads {args.inter_threads}", flush=True)

    start = time.perf_counter()
    tf1.set_random_seed(1234)  # as train.py
    x = tf1.placeholder(tf.float32, (batch, crop, crop, 3), name="x_train")  # NHWC
    tensors = graph.build_train_graph(ae_cfg, pc_cfg, x)
    fetches = [tensors["train_op"], tensors["global_step"]]  # the original's train loop's run
    num_params = sum(int(np.prod(v.shape.as_list())) for v in tf1.trainable_variables())
    sess = graph.make_session(args.threads, args.inter_threads)
    sess.run(tf1.global_variables_initializer())
    print(f"graph built and initialized in {time.perf_counter() - start:.1f} s", flush=True)
    rng = np.random.RandomState(0)
    batches = [rng.randint(0, 256, size=(batch, crop, crop, 3)).astype(np.float32)
               for _ in range(args.steps + 1)]

    start = time.perf_counter()
    sess.run(fetches, {x: batches[0]})  # warm-up: graph optimization, allocator, kernel setup
    print(f"warm-up step {time.perf_counter() - start:.2f} s", flush=True)
    start = time.perf_counter()
    for x_batch in batches[1:]:
        sess.run(fetches, {x: x_batch})
    seconds = time.perf_counter() - start
    # Peak memory of the steps alone: the checks below build executors of their own.
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux
    # read afterwards: the fetch inside a step may read it before the increment
    steps_done = sess.run(tensors["global_step"])
    if steps_done != args.steps + 1:
        raise RuntimeError(f"global_step is {steps_done} after {args.steps + 1} steps")
    loss = sess.run(tensors["total_loss"], {x: batches[-1]})
    if not np.isfinite(loss):
        raise RuntimeError(f"total_loss is {loss} after training")
    img_s, s_step = args.steps * batch / seconds, seconds / args.steps
    print(f"original TF graph, ae cvpr/med + pc cvpr/res_shallow: crop {crop}x{crop}, "
          f"batch {batch}, {num_params:,} trainable parameters: {s_step:.2f} s/step, "
          f"{img_s:.2f} img/s")
    print(f"  peak RSS {peak_gb:.2f} GB")
    print(f"img_s={img_s:.4f} s_step={s_step:.4f} peak_rss_gb={peak_gb:.3f}", flush=True)


if __name__ == "__main__":
    main()
