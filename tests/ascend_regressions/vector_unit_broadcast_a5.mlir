// bishengir-compile-a5 1.2.0 (Ascend950PR_9599): a vsub of two [rows, 1] tensors marked
// broadcast = [1] (a unit dim broadcast onto itself; the 910B tool accepts it) fails in the final HIVM
// pipeline: "'hivm.hir.vsub' op broadcast dim exceeds op's rank" (the unit dims are folded first).
// Emitted by the sink-attention decode merge with a single split. Workaround
// (targets/ascend/kernels/sink_combine.py): no broadcast attribute where the shapes already agree.
module {
  func.func @tide_sink_combine(%M: memref<8x1xf32, #hivm.address_space<gm>>, %L: memref<8x1xf32, #hivm.address_space<gm>>, %ACC: memref<8x64xf32, #hivm.address_space<gm>>, %OUT: memref<8x64xf32, #hivm.address_space<gm>>) attributes {hacc.entry, hacc.function_kind = #hacc.function_kind<DEVICE>, hacc.block_dim = 1 : i64} {
    %c1_index = arith.constant 1 : index
    %c8_index = arith.constant 8 : index
    %c0_index = arith.constant 0 : index
    %zero1 = arith.constant 0.000000e+00 : f32
    %ninf2 = arith.constant 0xFF800000 : f32
    %bid3 = hivm.hir.get_block_idx -> i64
    %bidx4 = arith.index_cast %bid3 : i64 to index
    %bnum5 = hivm.hir.get_block_num -> i64
    %bnumx6 = arith.index_cast %bnum5 : i64 to index
    scf.for %task7 = %bidx4 to %c1_index step %bnumx6 {
      %r08 = arith.muli %task7, %c8_index : index
      %view9 = memref.subview %M[%r08, %c0_index] [8, 1] [1, 1] : memref<8x1xf32, #hivm.address_space<gm>> to memref<8x1xf32, strided<[1, 1], offset: ?>, #hivm.address_space<gm>>
      %buf10 = memref.alloc() : memref<8x1xf32>
      hivm.hir.load ins(%view9 : memref<8x1xf32, strided<[1, 1], offset: ?>, #hivm.address_space<gm>>) outs(%buf10 : memref<8x1xf32>)
      %t11 = bufferization.to_tensor %buf10 restrict writable : memref<8x1xf32>
      %view12 = memref.subview %L[%r08, %c0_index] [8, 1] [1, 1] : memref<8x1xf32, #hivm.address_space<gm>> to memref<8x1xf32, strided<[1, 1], offset: ?>, #hivm.address_space<gm>>
      %buf13 = memref.alloc() : memref<8x1xf32>
      hivm.hir.load ins(%view12 : memref<8x1xf32, strided<[1, 1], offset: ?>, #hivm.address_space<gm>>) outs(%buf13 : memref<8x1xf32>)
      %t14 = bufferization.to_tensor %buf13 restrict writable : memref<8x1xf32>
      %ve15 = tensor.empty() : tensor<8x1xf32>
      %v16 = hivm.hir.vbrc ins(%ninf2 : f32) outs(%ve15 : tensor<8x1xf32>) -> tensor<8x1xf32>
      %red17 = hivm.hir.vreduce <max> ins(%t11 : tensor<8x1xf32>) outs(%v16 : tensor<8x1xf32>) unsigned_src = false reduce_dims = [1] -> tensor<8x1xf32>
      %ve18 = tensor.empty() : tensor<8x1xf32>
      %v19 = hivm.hir.vsub ins(%t11, %red17 : tensor<8x1xf32>, tensor<8x1xf32>) outs(%ve18 : tensor<8x1xf32>) broadcast = [1] -> tensor<8x1xf32>
      %ve20 = tensor.empty() : tensor<8x1xf32>
      %v21 = hivm.hir.vexp ins(%v19 : tensor<8x1xf32>) outs(%ve20 : tensor<8x1xf32>) -> tensor<8x1xf32>
      %ve22 = tensor.empty() : tensor<8x1xf32>
      %v23 = hivm.hir.vmul ins(%t14, %v21 : tensor<8x1xf32>, tensor<8x1xf32>) outs(%ve22 : tensor<8x1xf32>) -> tensor<8x1xf32>
      %ve24 = tensor.empty() : tensor<8x1xf32>
      %v25 = hivm.hir.vbrc ins(%zero1 : f32) outs(%ve24 : tensor<8x1xf32>) -> tensor<8x1xf32>
      %red26 = hivm.hir.vreduce <sum> ins(%v23 : tensor<8x1xf32>) outs(%v25 : tensor<8x1xf32>) unsigned_src = false reduce_dims = [1] -> tensor<8x1xf32>
      %ve27 = tensor.empty() : tensor<8x64xf32>
      %v28 = hivm.hir.vbrc ins(%zero1 : f32) outs(%ve27 : tensor<8x64xf32>) -> tensor<8x64xf32>
      %view29 = memref.subview %M[%r08, %c0_index] [8, 1] [1, 1] : memref<8x1xf32, #hivm.address_space<gm>> to memref<8x1xf32, strided<[1, 1], offset: ?>, #hivm.address_space<gm>>
      %buf30 = memref.alloc() : memref<8x1xf32>
      hivm.hir.load ins(%view29 : memref<8x1xf32, strided<[1, 1], offset: ?>, #hivm.address_space<gm>>) outs(%buf30 : memref<8x1xf32>)
      %t31 = bufferization.to_tensor %buf30 restrict writable : memref<8x1xf32>
      %ve32 = tensor.empty() : tensor<8x1xf32>
      %v33 = hivm.hir.vsub ins(%t31, %red17 : tensor<8x1xf32>, tensor<8x1xf32>) outs(%ve32 : tensor<8x1xf32>) -> tensor<8x1xf32>
      %ve34 = tensor.empty() : tensor<8x1xf32>
      %v35 = hivm.hir.vexp ins(%v33 : tensor<8x1xf32>) outs(%ve34 : tensor<8x1xf32>) -> tensor<8x1xf32>
      %ve36 = tensor.empty() : tensor<8x1xf32>
      %v37 = hivm.hir.vdiv ins(%v35, %red26 : tensor<8x1xf32>, tensor<8x1xf32>) outs(%ve36 : tensor<8x1xf32>) -> tensor<8x1xf32>
      %ar38 = arith.addi %r08, %c0_index : index
      %view39 = memref.subview %ACC[%ar38, %c0_index] [8, 64] [1, 1] : memref<8x64xf32, #hivm.address_space<gm>> to memref<8x64xf32, strided<[64, 1], offset: ?>, #hivm.address_space<gm>>
      %buf40 = memref.alloc() : memref<8x64xf32>
      hivm.hir.load ins(%view39 : memref<8x64xf32, strided<[64, 1], offset: ?>, #hivm.address_space<gm>>) outs(%buf40 : memref<8x64xf32>)
      %t41 = bufferization.to_tensor %buf40 restrict writable : memref<8x64xf32>
      %ve42 = tensor.empty() : tensor<8x64xf32>
      %v43 = hivm.hir.vmul ins(%t41, %v37 : tensor<8x64xf32>, tensor<8x1xf32>) outs(%ve42 : tensor<8x64xf32>) broadcast = [1] -> tensor<8x64xf32>
      %ve44 = tensor.empty() : tensor<8x64xf32>
      %v45 = hivm.hir.vadd ins(%v28, %v43 : tensor<8x64xf32>, tensor<8x64xf32>) outs(%ve44 : tensor<8x64xf32>) -> tensor<8x64xf32>
      %view46 = memref.subview %OUT[%r08, %c0_index] [8, 64] [1, 1] : memref<8x64xf32, #hivm.address_space<gm>> to memref<8x64xf32, strided<[64, 1], offset: ?>, #hivm.address_space<gm>>
      hivm.hir.store ins(%v45 : tensor<8x64xf32>) outs(%view46 : memref<8x64xf32, strided<[64, 1], offset: ?>, #hivm.address_space<gm>>)
    }
    return
  }
}
