"""A GGUF v3 reader for the tests only: it parses back what gguf_file.GGUFWriter writes (header,
metadata, tensor infos, data), so the tests of the writer need no extra package. It reads the
whole file into memory and checks the layout as it goes, as strictly as ggml's own reader
(gguf.cpp): the magic, each tensor's offset equal to the padded sizes of those before it."""
import struct
from pathlib import Path

VALUE_TYPES = {  # number in the file -> (name, struct format of one value)
    0: ("uint8", "<B"), 1: ("int8", "<b"), 2: ("uint16", "<H"), 3: ("int16", "<h"),
    4: ("uint32", "<I"), 5: ("int32", "<i"), 6: ("float32", "<f"), 7: ("bool", "<?"),
    8: ("string", None), 9: ("array", None), 10: ("uint64", "<Q"), 11: ("int64", "<q"),
    12: ("float64", "<d"),
}
TENSOR_TYPES = {0: ("f32", 1, 4), 1: ("f16", 1, 2), 8: ("q8_0", 32, 34)}  # per block


class Cursor:
    """Reads little-endian values from bytes, front to back."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self):
        n = self.take("<Q")
        text = self.data[self.pos:self.pos + n].decode("utf-8")
        self.pos += n
        return text

    def value(self, type_number):
        name, fmt = VALUE_TYPES[type_number]
        if name == "string":
            return self.string()
        if name == "array":
            element_type, count = self.take("<I"), self.take("<Q")
            return [self.value(element_type) for _ in range(count)]
        return self.take(fmt)


def read_gguf(path):
    """-> dict(version, alignment, data_start, metadata {key: (type name, value)} where an array's
    type name is 'array[ELEMENT]', tensors {name: dict(dims, shape, type, offset, data)}): dims in
    ggml order as stored, shape the torch order, data the tensor's raw bytes."""
    raw = Path(path).read_bytes()
    c = Cursor(raw)
    assert raw[:4] == b"GGUF", "bad magic"
    c.pos = 4
    version, n_tensors, n_kv = c.take("<I"), c.take("<Q"), c.take("<Q")
    metadata = {}
    for _ in range(n_kv):
        key, type_number = c.string(), c.take("<I")
        name = VALUE_TYPES[type_number][0]
        if name == "array":
            name = f"array[{VALUE_TYPES[struct.unpack_from('<I', raw, c.pos)[0]][0]}]"
        metadata[key] = (name, c.value(type_number))
    infos = []
    for _ in range(n_tensors):
        name, n_dims = c.string(), c.take("<I")
        dims = [c.take("<Q") for _ in range(n_dims)]
        infos.append((name, dims, c.take("<I"), c.take("<Q")))
    alignment = metadata.get("general.alignment", ("uint32", 32))[1]
    data_start = c.pos + (-c.pos % alignment)
    tensors, expected_offset = {}, 0
    for name, dims, type_number, offset in infos:
        kind, per_block, block_bytes = TENSOR_TYPES[type_number]
        count = 1
        for d in dims:
            count *= d
        assert dims[0] % per_block == 0, f"{name}: rows not a multiple of the block size"
        nbytes = count // per_block * block_bytes
        # as ggml's reader (gguf.cpp) insists: tensors lie in order, each padded to the alignment
        assert offset == expected_offset, f"{name}: offset {offset}, expected {expected_offset}"
        expected_offset += nbytes + (-nbytes % alignment)
        start = data_start + offset
        assert start + nbytes <= len(raw), f"{name}: data beyond the end of the file"
        tensors[name] = dict(dims=dims, shape=list(reversed(dims)), type=kind, offset=offset,
                             data=raw[start:start + nbytes])
    return dict(version=version, alignment=alignment, data_start=data_start, metadata=metadata,
                tensors=tensors, size=len(raw))
