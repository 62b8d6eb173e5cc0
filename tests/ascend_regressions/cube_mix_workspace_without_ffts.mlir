// A mixed cube + vector kernel (mmadL1 -> vexp -> vcast -> store) whose only extra argument is the
// workspace: bishengir-compile 1.2.0 --enable-hivm-compile --target=Ascend910B1 segfaults in
// hivm-mark-stride-align (with no workspace argument at all it reports 'failed to bind workspace
// argument'; the 950 tool compiles all three forms).
// Workaround (used by targets/ascend/kernels/moe_grouped.py): also pass the FFTS base address as an
// i64 argument with hacc.arg_type<ffts_base_address>, before the workspace.
// workaround-from: %ws: memref<?xi8> {hacc.arg_type = #hacc.arg_type<workspace>}
// workaround-to: %ff: i64 {hacc.arg_type = #hacc.arg_type<ffts_base_address>}, %ws: memref<?xi8> {hacc.arg_type = #hacc.arg_type<workspace>}
module {
  func.func @mix(%ws: memref<?xi8> {hacc.arg_type = #hacc.arg_type<workspace>}, %a: memref<16x32xbf16, #hivm.address_space<gm>>, %b: memref<16x32xbf16, #hivm.address_space<gm>>, %c: memref<16x16xbf16, #hivm.address_space<gm>>) attributes {hacc.entry, hacc.function_kind = #hacc.function_kind<DEVICE>, hacc.block_dim = 1 : i64} {
    %true = arith.constant true
    %c16 = arith.constant 16 : index
    %c32 = arith.constant 32 : index
    %la = memref.alloc() : memref<16x32xbf16>
    hivm.hir.load ins(%a : memref<16x32xbf16, #hivm.address_space<gm>>) outs(%la : memref<16x32xbf16>)
    %ta = bufferization.to_tensor %la restrict writable : memref<16x32xbf16>
    %lb = memref.alloc() : memref<16x32xbf16>
    hivm.hir.load ins(%b : memref<16x32xbf16, #hivm.address_space<gm>>) outs(%lb : memref<16x32xbf16>)
    %tb = bufferization.to_tensor %lb restrict writable : memref<16x32xbf16>
    %e = tensor.empty() : tensor<16x16xf32>
    %r = hivm.hir.mmadL1 {b_transpose} ins(%ta, %tb, %true, %c16, %c32, %c16 : tensor<16x32xbf16>, tensor<16x32xbf16>, i1, index, index, index) outs(%e : tensor<16x16xf32>) -> tensor<16x16xf32>
    %e2 = tensor.empty() : tensor<16x16xf32>
    %x = hivm.hir.vexp ins(%r : tensor<16x16xf32>) outs(%e2 : tensor<16x16xf32>) -> tensor<16x16xf32>
    %e3 = tensor.empty() : tensor<16x16xbf16>
    %h = hivm.hir.vcast ins(%x : tensor<16x16xf32>) outs(%e3 : tensor<16x16xbf16>) round_mode = <rint> -> tensor<16x16xbf16>
    hivm.hir.store ins(%h : tensor<16x16xbf16>) outs(%c : memref<16x16xbf16, #hivm.address_space<gm>>)
    return
  }
}
