"""Symbols to bits and back, exactly: the context model as an integer network derived
from `ProbClassifier.layers` (`integer_model`), the wavefront order in which symbols are coded
and decoded with bounded memory (`wavefront`), range coding with constriction
(`range_coding`), and the file format: header, CRC, the weights' fingerprint (`bitstream`).

May import: imgcomp.base, imgcomp.nets.
"""
