"""The original's config files: the restricted Python they are written in, `Config`,
flattening, job names and log-dir name parts (`parsing`), and every key's type, default and
meaning (`schema`), so an unknown key or a wrong type is refused when a file is read.

May import: imgcomp.base.
"""
