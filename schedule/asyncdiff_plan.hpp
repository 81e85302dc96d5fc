#pragma once
// AsyncDiff model parallelism: how a denoiser splits into n components, which worker runs which, and what each
// consumes. Ref: the AsyncDiff paper (Chen et al., 2024) §3 and the Hybridiff reference scripts' split tables
// (docs/schedules.md).

#include <cstdint>
#include <string>
#include <vector>

namespace hybridiff::schedule {

enum class denoiser_family : std::uint8_t { sdxl_unet, sd3_transformer };

/// One component: the modules it owns, by diffusers module path ("down_blocks.2", "up_blocks.0.resnets.1", or
/// for SD3 the block range [first_block, end_block) plus, for the last one, norm_out and proj_out).
struct component {
  std::vector<std::string> modules;
  int first_block = 0, end_block = 0;  ///< SD3 only
};

/// The split of a denoiser into `n` components and the workers that run them.
struct asyncdiff_plan {
  denoiser_family family;
  int n = 2;       ///< components
  int stride = 1;  ///< 1: every component computes every step; 2: one compute round per two steps
  std::vector<component> components;

  /// Workers needed: n + stride − 1 (stride 2 adds a second copy of the last component).
  int world_size() const { return n + stride - 1; }
  /// The component `worker` runs: worker r < n runs component r; the extra stride-2 worker runs component n − 1.
  int component_of(int worker) const { return worker < n ? worker : n - 1; }
  /// The component whose output is the denoiser's prediction (the one holding conv_out / proj_out).
  int output_component() const { return n - 1; }

  /// Every module of the split in forward order.
  std::vector<std::string> module_order() const;
  /// The modules of other components whose (stale) outputs component `c` computes on: those before one of its
  /// modules in forward order (a module after its last one cannot reach it) — SDXL: all of them (skip connections
  /// carry any earlier output); SD3, a chain of blocks: only the module right before each of its modules.
  std::vector<std::string> inputs_of(int c) const;
  /// The modules of component `c` that another component computes on: what a worker of `c` must hand on.
  std::vector<std::string> read_by_others(int c) const;
};

/// The reference's SDXL split tables (§5.1, n = 2, 3, 4; n = 4 is Hybridiff's variant) and SD3's contiguous block
/// groups (`blocks` JointTransformerBlocks, group boundaries at (j+1)·⌊blocks/n⌋, the last group with
/// norm_out/proj_out). Throws std::invalid_argument for n outside {2,3,4}, stride outside {1,2}, or an SD3 model
/// with fewer blocks than components.
asyncdiff_plan make_plan(denoiser_family family, int n, int stride, int blocks = 24);

/// Checks the rule world = n + stride − 1 for `workers`; throws std::invalid_argument explaining it.
void check_world_size(const asyncdiff_plan& plan, int workers);

}  // namespace hybridiff::schedule
