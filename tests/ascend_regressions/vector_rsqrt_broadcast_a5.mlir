// bishengir-compile-a5 1.2.0 (Ascend950PR_9599): vrsqrt (and vrec) of a [rows, 1] tensor is decomposed
// into a vdiv whose operands' shapes disagree; the final HIVM pipeline fails. Workaround
// (targets/ascend/kernels/rmsnorm.py): vsqrt, then vdiv of x by the root with broadcast = [1].
module {
  func.func @rms(%X: memref<16x128xf32, #hivm.address_space<gm>>, %W: memref<1x128xf32, #hivm.address_space<gm>>, %Y: memref<16x128xf32, #hivm.address_space<gm>>) attributes {hacc.entry, hacc.function_kind = #hacc.function_kind<DEVICE>, hacc.block_dim = 1 : i64} {
    %xb = memref.alloc() : memref<16x128xf32>
    hivm.hir.load ins(%X : memref<16x128xf32, #hivm.address_space<gm>>) outs(%xb : memref<16x128xf32>)
    %x = bufferization.to_tensor %xb restrict writable : memref<16x128xf32>
    %wb = memref.alloc() : memref<1x128xf32>
    hivm.hir.load ins(%W : memref<1x128xf32, #hivm.address_space<gm>>) outs(%wb : memref<1x128xf32>)
    %w = bufferization.to_tensor %wb restrict writable : memref<1x128xf32>
    %e0 = tensor.empty() : tensor<16x128xf32>
    %sq = hivm.hir.vmul ins(%x, %x : tensor<16x128xf32>, tensor<16x128xf32>) outs(%e0 : tensor<16x128xf32>) -> tensor<16x128xf32>
    %e1 = tensor.empty() : tensor<16x1xf32>
    %zero = arith.constant 0.0 : f32
    %z = hivm.hir.vbrc ins(%zero : f32) outs(%e1 : tensor<16x1xf32>) -> tensor<16x1xf32>
    %s = hivm.hir.vreduce <sum> ins(%sq : tensor<16x128xf32>) outs(%z : tensor<16x1xf32>) unsigned_src = false reduce_dims = [1] -> tensor<16x1xf32>
    %inv = arith.constant 7.8125e-03 : f32
    %e2 = tensor.empty() : tensor<16x1xf32>
    %m = hivm.hir.vmul ins(%s, %inv : tensor<16x1xf32>, f32) outs(%e2 : tensor<16x1xf32>) -> tensor<16x1xf32>
    %eps = arith.constant 1.0e-06 : f32
    %e3 = tensor.empty() : tensor<16x1xf32>
    %me = hivm.hir.vadd ins(%m, %eps : tensor<16x1xf32>, f32) outs(%e3 : tensor<16x1xf32>) -> tensor<16x1xf32>
    %e4 = tensor.empty() : tensor<16x1xf32>
    %r = hivm.hir.vrsqrt ins(%me : tensor<16x1xf32>) outs(%e4 : tensor<16x1xf32>) -> tensor<16x1xf32>
    %e5 = tensor.empty() : tensor<16x128xf32>
    %xn = hivm.hir.vmul ins(%x, %r : tensor<16x128xf32>, tensor<16x1xf32>) outs(%e5 : tensor<16x128xf32>) broadcast = [1] -> tensor<16x128xf32>
    %e6 = tensor.empty() : tensor<16x128xf32>
    %y = hivm.hir.vmul ins(%xn, %w : tensor<16x128xf32>, tensor<1x128xf32>) outs(%e6 : tensor<16x128xf32>) broadcast = [0] -> tensor<16x128xf32>
    hivm.hir.store ins(%y : tensor<16x128xf32>) outs(%Y : memref<16x128xf32, #hivm.address_space<gm>>)
    return
  }
}
