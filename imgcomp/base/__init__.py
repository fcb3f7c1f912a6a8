"""The small base every other part may use: atomic file writes (`atomic`), the CPU/CUDA
choice of every entry point (`device`), torchrun process groups (`distributed`), and image files
in and out as H x W x 3 uint8 RGB, with the image sets named by a folder, a glob, `kodak`,
`bsds500_val` or `samples` (`image_files`), the user's folders for downloads (`user_dirs`), and
safe downloads: resumed, checked, unpacked without trusting the archive (`download`), the
command lines' number types (`arg_types`) and intra-op thread counts (`threads`). It knows
nothing of models, configs or log dirs.

May import: nothing from imgcomp.
"""
