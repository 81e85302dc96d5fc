#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "models/io/model_folder.hpp"

namespace hybridiff::models {

/// True when `path` names a single-file checkpoint rather than a folder: a regular file.
bool is_single_file(const std::filesystem::path& path);

/// A single-file checkpoint in Stability's original layout, as A1111, ComfyUI and CivitAI share them, opened as a
/// diffusers folder. SDXL base: the UNet under "model.diffusion_model." (input_blocks, middle_block,
/// output_blocks), the VAE under "first_stage_model.", CLIP-L under "conditioner.embedders.0.transformer." and
/// OpenCLIP's CLIP-G under "conditioner.embedders.1.model.". SD3, SD3.5 Large and Medium: the MMDiT under
/// "model.diffusion_model." (joint_blocks with fused qkv), the VAE under "first_stage_model.", the text encoders in
/// transformers' layout under "text_encoders.clip_l/clip_g/t5xxl.transformer." (CLIP-L without its projection: the
/// identity; T5 optional). Configs, tokenizers and the scheduler come from `config_dir`, a diffusers folder of the
/// same family whose weights are not read (empty: the family's repository in the Hugging Face cache:
/// stabilityai/stable-diffusion-xl-base-1.0, stable-diffusion-3-medium-diffusers, stable-diffusion-3.5-large or
/// -medium). Each component held by the file reads its tensors from it under diffusers' names: views of the mapped
/// file, converted without copies (but a few swapped norm halves). Every key of a component's part of the file must
/// convert; keys outside the components' parts are ignored (logged). Throws naming the file and the key.
model_folder open_single_file(const std::filesystem::path& file, const std::filesystem::path& config_dir = {});

/// What `--model` names: a single-file checkpoint (open_single_file with `config_dir`) or a folder
/// (model_folder::open).
model_folder open_model(const std::filesystem::path& model, const std::filesystem::path& config_dir = {});

struct unet_config;

/// The layout of an SDXL UNet that the LDM key numbering depends on.
struct ldm_unet_layout {
  int layers_per_block = 2;
  std::vector<bool> up_block_has_attention;  ///< per up block (diffusers' order)
  /// nullopt for a UNet whose blocks have different numbers of layers (no LDM numbering is read for those).
  static std::optional<ldm_unet_layout> from(const unet_config& unet);
};

/// A UNet key in the LDM layout ("input_blocks.4.1.proj_in.weight", without "model.diffusion_model.") as
/// diffusers names it ("down_blocks.1.attentions.0.proj_in.weight"); nullopt when it is not one. `separator` is
/// what joins the parts of the name: '.' for checkpoint keys, '_' for kohya LoRA module names, whose result keeps
/// '_' too ("input_blocks_4_1_proj_in" -> "down_blocks_1_attentions_0_proj_in").
std::optional<std::string> unet_name_from_ldm(const std::string& key, const ldm_unet_layout& layout,
                                              char separator = '.');

}  // namespace hybridiff::models
