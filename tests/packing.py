"""Hand-packing for tests: several examples laid into one row, as grain's packer does."""
import numpy as np


def pack(examples, length):
    """[1, length] tokens, segment ids (1.. per example, 0 = padding) and positions."""
    tokens = np.zeros(length, np.int32)
    segments = np.zeros(length, np.int32)
    positions = np.zeros(length, np.int32)
    offset = 0
    for index, example in enumerate(examples, 1):
        tokens[offset : offset + len(example)] = example
        segments[offset : offset + len(example)] = index
        positions[offset : offset + len(example)] = np.arange(len(example))
        offset += len(example)
    return tokens[None], segments[None], positions[None]
