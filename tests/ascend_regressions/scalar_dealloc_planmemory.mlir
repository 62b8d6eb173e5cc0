// A translated (scalar) kernel with a local buffer freed by memref.dealloc at the end of its scope:
// bishengir-compile 1.2.0 aborts in memory planning ("LLVM ERROR: PlanMemory Traverse IR Failed!")
// for both Ascend910B1 and Ascend950PR_9599.
// Workaround (used by targets/ascend/codegen.py): no dealloc; every local buffer is one UB
// allocation at the function's entry, which bishengir plans statically.
// workaround-from:     memref.dealloc %buf1 : memref<1x1x4x1xf32>
// workaround-to:
module {
  func.func @fused_add_divide(%arg0: memref<1x1x4x1xf32, #hivm.address_space<gm>>, %arg1: memref<1x1x4x4xf32, #hivm.address_space<gm>>, %arg2: memref<1x1x4x4xf32, #hivm.address_space<gm>>) attributes {hacc.entry, hacc.function_kind = #hacc.function_kind<DEVICE>, hacc.block_dim = 1 : i64} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 4 : index
    %c2 = arith.constant 1 : index
    %c3 = arith.constant 0x358637BD : f32
    %buf1 = memref.alloc() : memref<1x1x4x1xf32>
    scf.for %i2 = %c0 to %c1 step %c2 {
      %v3 = memref.load %arg0[%c0, %c0, %i2, %c0] : memref<1x1x4x1xf32, #hivm.address_space<gm>>
      %v4 = arith.addf %v3, %c3 : f32
      memref.store %v4, %buf1[%c0, %c0, %i2, %c0] : memref<1x1x4x1xf32>
    }
    scf.for %i5 = %c0 to %c1 step %c2 {
      scf.for %i6 = %c0 to %c1 step %c2 {
        %v7 = memref.load %arg1[%c0, %c0, %i5, %i6] : memref<1x1x4x4xf32, #hivm.address_space<gm>>
        %v8 = memref.load %buf1[%c0, %c0, %i5, %c0] : memref<1x1x4x1xf32>
        %v9 = arith.divf %v7, %v8 : f32
        memref.store %v9, %arg2[%c0, %c0, %i5, %i6] : memref<1x1x4x4xf32, #hivm.address_space<gm>>
      }
    }
    memref.dealloc %buf1 : memref<1x1x4x1xf32>
    return
  }
}
