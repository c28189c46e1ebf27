"""Minimal GGUF v3 writer and reader (little-endian), written for the PipeInfer demo models.

Layout: "GGUF" | u32 version=3 | u64 n_tensors | u64 n_kv | kv pairs | tensor infos | pad to 32 | tensor data
(each tensor's data starts at a multiple of 32 bytes from the start of the data section).
Supported tensor types: F32 (0), F16 (1), Q8_0 (8).
"""
import struct

import numpy as np

GGUF_MAGIC = b'GGUF'
GGUF_VERSION = 3
ALIGNMENT = 32

# metadata value types
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY, T_UINT64, \
    T_INT64, T_FLOAT64 = range(13)
_SCALAR_FMT = {T_UINT8: '<B', T_INT8: '<b', T_UINT16: '<H', T_INT16: '<h', T_UINT32: '<I', T_INT32: '<i',
               T_FLOAT32: '<f', T_BOOL: '<?', T_UINT64: '<Q', T_INT64: '<q', T_FLOAT64: '<d'}

# ggml tensor types
GGML_F32, GGML_F16, GGML_Q8_0 = 0, 1, 8
QK8_0 = 32


def _str(s):
    b = s.encode('utf-8')
    return struct.pack('<Q', len(b)) + b


class Value:
    """A typed metadata value.  Plain Python values are mapped by add_*(); use Value for explicit types."""
    def __init__(self, vtype, value, elem_type=None):
        self.vtype, self.value, self.elem_type = vtype, value, elem_type

    def encode(self):
        return struct.pack('<I', self.vtype) + self.payload()

    def payload(self):
        t = self.vtype
        if t == T_STRING:
            return _str(self.value)
        if t == T_ARRAY:
            et = self.elem_type
            out = [struct.pack('<IQ', et, len(self.value))]
            if et == T_STRING:
                out += [_str(s) for s in self.value]
            else:
                dt = np.dtype(_SCALAR_FMT[et].replace('?', 'b1'))
                out.append(np.asarray(self.value).astype(dt).tobytes())
            return b''.join(out)
        return struct.pack(_SCALAR_FMT[t], self.value)


def quantize_q8_0(x):
    """ggml's quantize_row_q8_0_reference: per 32-block d = amax/127 (float32), id = 1/d (0 if d == 0),
    q = roundf(x*id) (half away from zero); d stored as fp16.  Returns raw bytes (34 bytes per block)."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK8_0)
    amax = np.abs(x).max(axis=1)
    d = (amax / np.float32(127.0)).astype(np.float32)
    with np.errstate(divide='ignore'):
        idv = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    v = (x * idv[:, None]).astype(np.float32)                     # float32 product, as in C
    v64 = v.astype(np.float64)
    q = (np.sign(v64) * np.floor(np.abs(v64) + 0.5)).astype(np.int8)  # roundf, exact in float64
    blocks = np.empty(x.shape[0], dtype=[('d', '<f2'), ('q', 'i1', (QK8_0,))])
    blocks['d'] = d.astype(np.float16)
    blocks['q'] = q
    return blocks.tobytes()


def dequantize_q8_0(raw, n):
    blocks = np.frombuffer(raw, dtype=[('d', '<f2'), ('q', 'i1', (QK8_0,))], count=n // QK8_0)
    return (blocks['d'].astype(np.float32)[:, None] * blocks['q'].astype(np.float32)).reshape(-1)


def tensor_nbytes(ggml_type, n):
    if ggml_type == GGML_F32:
        return 4 * n
    if ggml_type == GGML_F16:
        return 2 * n
    if ggml_type == GGML_Q8_0:
        return n // QK8_0 * 34
    raise ValueError(ggml_type)


class GGUFWriter:
    def __init__(self):
        self.kv = []        # (key, Value)
        self.tensors = []   # (name, ne list, ggml_type, bytes)

    # --- metadata -----------------------------------------------------------------------------------
    def add(self, key, vtype, value, elem_type=None):
        assert all(k != key for k, _ in self.kv), key
        self.kv.append((key, Value(vtype, value, elem_type)))

    def add_string(self, k, v): self.add(k, T_STRING, v)
    def add_u32(self, k, v): self.add(k, T_UINT32, int(v))
    def add_i32(self, k, v): self.add(k, T_INT32, int(v))
    def add_f32(self, k, v): self.add(k, T_FLOAT32, float(v))
    def add_bool(self, k, v): self.add(k, T_BOOL, bool(v))
    def add_array(self, k, elem_type, values): self.add(k, T_ARRAY, list(values), elem_type)

    # --- tensors ------------------------------------------------------------------------------------
    def add_tensor(self, name, array, ggml_type):
        """array: numpy array in PyTorch/C order (outermost first); GGUF ne is the reversed shape."""
        a = np.ascontiguousarray(array, dtype=np.float32)
        ne = list(reversed(a.shape))
        if ggml_type == GGML_F32:
            raw = a.astype('<f4').tobytes()
        elif ggml_type == GGML_F16:
            raw = a.astype('<f2').tobytes()
        elif ggml_type == GGML_Q8_0:
            assert ne[0] % QK8_0 == 0, (name, ne)
            raw = quantize_q8_0(a)
        else:
            raise ValueError(ggml_type)
        assert len(raw) == tensor_nbytes(ggml_type, a.size)
        self.tensors.append((name, ne, ggml_type, raw))

    def write(self, path):
        out = [GGUF_MAGIC, struct.pack('<IQQ', GGUF_VERSION, len(self.tensors), len(self.kv))]
        for k, v in self.kv:
            out.append(_str(k))
            out.append(v.encode())
        offset = 0
        for name, ne, t, raw in self.tensors:
            out.append(_str(name))
            out.append(struct.pack('<I', len(ne)))
            out.append(struct.pack('<%dQ' % len(ne), *ne))
            out.append(struct.pack('<IQ', t, offset))
            offset += len(raw)
            offset += (-offset) % ALIGNMENT
        head = b''.join(out)
        with open(path, 'wb') as f:
            f.write(head)
            f.write(b'\0' * ((-len(head)) % ALIGNMENT))
            for name, ne, t, raw in self.tensors:
                f.write(raw)
                f.write(b'\0' * ((-len(raw)) % ALIGNMENT))


# ---------------------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, buf):
        self.b, self.p = buf, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.b, self.p)
        self.p += struct.calcsize(fmt)
        return v[0] if len(v) == 1 else v

    def string(self):
        n = self.take('<Q')
        s = self.b[self.p:self.p + n].decode('utf-8')
        self.p += n
        return s

    def value(self, t):
        if t == T_STRING:
            return self.string()
        if t == T_ARRAY:
            et, n = self.take('<I'), self.take('<Q')
            return [self.value(et) for _ in range(n)]
        return self.take(_SCALAR_FMT[t])


def read_gguf(path):
    """Returns (metadata dict, {name: (ne, ggml_type, float32 numpy array in C order)})."""
    with open(path, 'rb') as f:
        buf = f.read()
    r = _Reader(buf)
    assert buf[:4] == GGUF_MAGIC
    r.p = 4
    version, n_t, n_kv = r.take('<I'), r.take('<Q'), r.take('<Q')
    assert version == 3
    meta = {}
    for _ in range(n_kv):
        k = r.string()
        meta[k] = r.value(r.take('<I'))
    infos = []
    for _ in range(n_t):
        name = r.string()
        nd = r.take('<I')
        ne = [r.take('<Q') for _ in range(nd)]
        t, off = r.take('<I'), r.take('<Q')
        infos.append((name, ne, t, off))
    align = meta.get('general.alignment', ALIGNMENT)
    base = r.p + ((-r.p) % align)
    tensors = {}
    for name, ne, t, off in infos:
        n = int(np.prod(ne))
        start = base + off
        raw = buf[start:start + tensor_nbytes(t, n)]
        if t == GGML_F32:
            a = np.frombuffer(raw, '<f4').astype(np.float32)
        elif t == GGML_F16:
            a = np.frombuffer(raw, '<f2').astype(np.float32)
        elif t == GGML_Q8_0:
            a = dequantize_q8_0(raw, n)
        else:
            raise ValueError(t)
        tensors[name] = (ne, t, a.reshape(list(reversed(ne))))
    return meta, tensors
