"""Which weights a bundle takes where the release offers two, decided when the graph is loaded and recorded in the
manifest's `provenance`.

The decoder: the official script decodes with the degradation-robust VAE it encodes with (`--denoise_vae_ckpt`
loads one AutoencoderKL for both). When that VAE carries decoder weights that differ from SD3's, the bundle takes
them, as the official script does; an encoder-only checkpoint leaves SD3's decoder, which DPIR's training froze.
"""

from pathlib import Path

from .weights import CheckpointError, read_state_dict

DECODER_PREFIXES = ("decoder.", "post_quant_conv.")


def decoder_difference(vae_encoder, sd3_dir):
    """The largest difference between the degradation-robust VAE's decoder weights and SD3's; None when the
    degradation-robust checkpoint has no decoder; infinity when the two decoders do not even have the same
    tensors."""
    dr = {k: v for k, v in read_state_dict(vae_encoder).items() if k.startswith(DECODER_PREFIXES)}
    if not dr:
        return None
    sd3 = {k: v for k, v in read_state_dict(Path(sd3_dir) / "vae").items() if k.startswith(DECODER_PREFIXES)}
    if dr.keys() != sd3.keys() or any(dr[k].shape != sd3[k].shape for k in dr):
        return float("inf")
    return max((dr[k].float() - sd3[k].float()).abs().max().item() for k in dr)


def choose_decoder(vae_encoder, sd3_dir, wanted="auto", log=print):
    """"dpir" (the degradation-robust VAE's decoder) or "sd3", for `--vae-decoder` `wanted` (auto, dpir, sd3)."""
    difference = decoder_difference(vae_encoder, sd3_dir)
    if difference is None:
        if wanted == "dpir":
            raise CheckpointError(f"--vae-decoder dpir: the degradation-robust VAE {vae_encoder} has no decoder weights")
        log("  decoder: the degradation-robust VAE has none; exporting SD3's")
        return "sd3"
    if difference == 0:
        log("  decoder: the degradation-robust VAE's equals SD3's; exporting SD3's")
        return "sd3"
    if wanted == "sd3":
        log(f"  decoder: the degradation-robust VAE's differs from SD3's (max |difference| {difference:.3g}); "
            f"exporting SD3's, as --vae-decoder sd3 asks")
        return "sd3"
    log(f"  decoder: the degradation-robust VAE's differs from SD3's (max |difference| {difference:.3g}); exporting "
        f"it, as the official script decodes with the VAE it encodes with (--vae-decoder sd3 exports SD3's)")
    return "dpir"
