"""Vector code for the two arithmetic cores of an LOPQ search, as numba intrinsics.

numba's own loops either keep a per-subspace horizontal sum in the decode loop or
vectorise across candidates with gathers; both run several times slower than
plain vector loads. These intrinsics emit LLVM vector instructions directly, with
every size a compile-time constant (``numba`` literal integers), so the loops are
fully unrolled and the accumulators stay in registers:

* :func:`residual_distance`: squared distance between a query's residual in a
  local frame and a database residual decoded from its PQ codes (one codeword row
  per subspace, loaded as vectors);
* :func:`rotate_block`: a few query halves rotated into one centroid's local
  frame (a ``d/2 x d/2`` matrix-vector product each, sharing the matrix loads);
* :func:`any_nearer`: whether any of a group of cells is nearer to a query than a
  threshold (the IVF cell selection's test, done without a branch per cell).

Vectors are split greedily into 16-, 8-, 4- and 1-lane pieces, so any size works;
the caller passes C-contiguous arrays.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_FAST = ("fast",)
_I16, _I32, _I64, _F32 = ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
_PIECES = (16, 8, 4, 1)
# rotate_block keeps block x _OUTPUT_TILE floats of results in registers while it walks the inputs
_OUTPUT_TILE = 64
MAX_ROTATED_DIM = 512  # wider halves: callers use BLAS, whose blocking suits matrices that size


def _pieces(size: int) -> list[tuple[int, int]]:
    """``(offset, lanes)`` pieces covering ``range(size)``, widest first."""
    pieces, offset = [], 0
    for lanes in _PIECES:
        while size - offset >= lanes:
            pieces.append((offset, lanes))
            offset += lanes
    return pieces


def _vector(lanes: int) -> ir.VectorType:
    return ir.VectorType(_F32, lanes)


def _load(builder, array, index, lanes):
    pointer = builder.bitcast(builder.gep(array.data, [index]), _vector(lanes).as_pointer())
    return builder.load(pointer, align=4)


def _load_half(builder, array, index, lanes):
    """``lanes`` IEEE half-precision values stored as uint16 bits, widened to float32."""
    pointer = builder.bitcast(builder.gep(array.data, [index]), ir.VectorType(_I16, lanes).as_pointer())
    bits = builder.load(pointer, align=2)
    return builder.fpext(builder.bitcast(bits, ir.VectorType(ir.HalfType(), lanes)), _vector(lanes))


def _store(builder, value, array, index, lanes):
    pointer = builder.bitcast(builder.gep(array.data, [index]), _vector(lanes).as_pointer())
    builder.store(value, pointer, align=4)


def _horizontal_sum(builder, vector, lanes):
    while lanes > 1:
        half = lanes // 2
        low = ir.Constant(ir.VectorType(_I32, half), list(range(half)))
        high = ir.Constant(ir.VectorType(_I32, half), list(range(half, lanes)))
        vector = builder.fadd(
            builder.shuffle_vector(vector, vector, low), builder.shuffle_vector(vector, vector, high), flags=_FAST
        )
        lanes = half
    return builder.extract_element(vector, ir.Constant(_I32, 0))


def _constant(value: int) -> ir.Constant:
    return ir.Constant(_I64, value)


def _literals(*values) -> bool:
    return all(isinstance(value, types.IntegerLiteral) for value in values)


def _contiguous(*arrays) -> bool:
    """The code indexes arrays by their shapes alone: they must be C-contiguous."""
    return all(isinstance(array, types.Array) and array.layout == "C" for array in arrays)


@intrinsic
def residual_distance(typingctx, frames, row, codes, position, first, codewords, half_m, sub_dim):
    """``sum_s ||frames[row, s*D:(s+1)*D] - codewords[s*K + codes[position, first+s]]||^2``
    for ``s < half_m``, ``D = sub_dim``, ``K = len(codewords) // half_m``; ``half_m`` and
    ``sub_dim`` literal."""
    if not _literals(half_m, sub_dim) or not _contiguous(frames, codes, codewords):
        return None
    n_subspaces, width = half_m.literal_value, sub_dim.literal_value
    pieces = _pieces(width)

    def codegen(context, builder, signature, args):
        frames_array = context.make_array(signature.args[0])(context, builder, args[0])
        codes_array = context.make_array(signature.args[2])(context, builder, args[2])
        codewords_array = context.make_array(signature.args[5])(context, builder, args[5])
        row_, position_, first_ = args[1], args[3], args[4]
        frame_start = builder.mul(row_, builder.extract_value(frames_array.shape, 1))
        code_start = builder.add(builder.mul(position_, builder.extract_value(codes_array.shape, 1)), first_)
        codebook_size = builder.sdiv(builder.extract_value(codewords_array.shape, 0), _constant(n_subspaces))
        sums = {}  # lanes -> accumulators, alternated so consecutive adds do not wait on each other
        for s in range(n_subspaces):
            code = builder.zext(builder.load(builder.gep(codes_array.data, [builder.add(code_start, _constant(s))])), _I64)
            codeword_start = builder.mul(builder.add(builder.mul(_constant(s), codebook_size), code), _constant(width))
            for offset, lanes in pieces:
                residual = _load(builder, frames_array, builder.add(frame_start, _constant(s * width + offset)), lanes)
                codeword = _load(builder, codewords_array, builder.add(codeword_start, _constant(offset)), lanes)
                difference = builder.fsub(residual, codeword, flags=_FAST)
                square = builder.fmul(difference, difference, flags=_FAST)
                partial = sums.setdefault(lanes, [])
                if len(partial) < 2:
                    partial.append(square)
                else:
                    partial.append(builder.fadd(partial.pop(0), square, flags=_FAST))
        total = ir.Constant(_F32, 0.0)
        for lanes, partial in sums.items():
            vector = partial[0] if len(partial) == 1 else builder.fadd(partial[0], partial[1], flags=_FAST)
            total = builder.fadd(total, _horizontal_sum(builder, vector, lanes), flags=_FAST)
        return total

    return types.float32(frames, row, codes, position, first, codewords, half_m, sub_dim), codegen


@intrinsic
def rotate_block(typingctx, halves, queries, rotations, centroid, shifts, frames, rows, block, half_dim):
    """``frames[rows[k]] = halves[queries[k]] @ rotations[centroid] - shifts[centroid]``
    for ``k < block``; ``block`` and ``half_dim`` literal, ``half_dim`` at most
    ``MAX_ROTATED_DIM``. Per tile of ``_OUTPUT_TILE`` outputs, a loop over the inputs
    multiplies each matrix row once into ``block`` queries' accumulators, which stay
    in registers (a fully unrolled loop of the same work spilled them). ``rotations``
    are float32, or half precision stored as uint16 bits (half the memory to read)."""
    if not _literals(block, half_dim) or half_dim.literal_value > MAX_ROTATED_DIM:
        return None
    if not _contiguous(halves, queries, rotations, shifts, frames, rows):
        return None
    count, dim = block.literal_value, half_dim.literal_value
    load_weights = _load_half if rotations.dtype == types.uint16 else _load

    def codegen(context, builder, signature, args):
        halves_array, queries_array, rotations_array, _, shifts_array, frames_array, rows_array = (
            context.make_array(signature.args[i])(context, builder, args[i]) if i != 3 else None for i in range(7)
        )
        input_starts, output_starts = [], []
        for k in range(count):
            query = builder.load(builder.gep(queries_array.data, [_constant(k)]))
            row = builder.load(builder.gep(rows_array.data, [_constant(k)]))
            input_starts.append(builder.mul(query, _constant(dim)))
            output_starts.append(builder.mul(row, _constant(dim)))
        matrix_start = builder.mul(args[3], _constant(dim * dim))
        shift_start = builder.mul(args[3], _constant(dim))
        for tile in range(0, dim, _OUTPUT_TILE):
            pieces = [(tile + offset, lanes) for offset, lanes in _pieces(min(_OUTPUT_TILE, dim - tile))]
            shift = [_load(builder, shifts_array, builder.add(shift_start, _constant(o)), n) for o, n in pieces]
            sums = [[cgutils.alloca_once_value(builder, builder.fneg(value, flags=_FAST)) for value in shift]
                    for _ in range(count)]
            with cgutils.for_range(builder, _constant(dim)) as loop:
                matrix_row = builder.add(matrix_start, builder.mul(loop.index, _constant(dim)))
                weights = [load_weights(builder, rotations_array, builder.add(matrix_row, _constant(o)), n)
                           for o, n in pieces]
                for k in range(count):
                    value = builder.load(builder.gep(halves_array.data, [builder.add(input_starts[k], loop.index)]))
                    for (_, lanes), weight, total in zip(pieces, weights, sums[k]):
                        broadcast = builder.shuffle_vector(
                            builder.insert_element(ir.Constant(_vector(lanes), ir.Undefined), value, ir.Constant(_I32, 0)),
                            ir.Constant(_vector(lanes), ir.Undefined),
                            ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes),
                        )
                        product = builder.fmul(broadcast, weight, flags=_FAST)
                        builder.store(builder.fadd(builder.load(total), product, flags=_FAST), total)
            for k in range(count):
                for (offset, lanes), total in zip(pieces, sums[k]):
                    index = builder.add(output_starts[k], _constant(offset))
                    _store(builder, builder.load(total), frames_array, index, lanes)
        return context.get_dummy_value()

    signature = types.void(halves, queries, rotations, centroid, shifts, frames, rows, block, half_dim)
    return signature, codegen


@intrinsic
def any_nearer(typingctx, products, norms, start, threshold, lanes):
    """Whether ``norms[start + j] - 2 * products[start + j] < threshold`` for some ``j <
    lanes`` (``lanes`` literal): one vector comparison instead of ``lanes`` branches."""
    if not _literals(lanes) or not _contiguous(products, norms):
        return None
    count = lanes.literal_value

    def codegen(context, builder, signature, args):
        products_array = context.make_array(signature.args[0])(context, builder, args[0])
        norms_array = context.make_array(signature.args[1])(context, builder, args[1])
        start_, threshold_ = args[2], args[3]
        twice = builder.fmul(_load(builder, products_array, start_, count),
                             ir.Constant(_vector(count), [2.0] * count), flags=_FAST)
        distances = builder.fsub(_load(builder, norms_array, start_, count), twice, flags=_FAST)
        bound = builder.shuffle_vector(
            builder.insert_element(ir.Constant(_vector(count), ir.Undefined), threshold_, ir.Constant(_I32, 0)),
            ir.Constant(_vector(count), ir.Undefined), ir.Constant(ir.VectorType(_I32, count), [0] * count))
        below = builder.fcmp_ordered("<", distances, bound)
        bits = builder.bitcast(below, ir.IntType(count))
        return builder.icmp_unsigned("!=", bits, ir.Constant(ir.IntType(count), 0))

    return types.boolean(products, norms, start, threshold, lanes), codegen
