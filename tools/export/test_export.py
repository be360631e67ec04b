#!/usr/bin/env python3
"""Self-checks of the converter's PyTorch side, on the tiny models (`python -m dpir_export.tiny DIR` first).

    python tools/export/test_export.py TINY_DIR

* our forward() with the alignment switched off equals diffusers' own SD3Transformer2DModel.forward;
* eta is the spec's formula (scalar mean and unbiased std per sample, eps 1e-9) after block 0;
* the regenerated position embedding equals the buffer diffusers builds;
* the LQ branch is three convolutions + GroupNorms with the spec's strides, widths and groups;
* checkpoints load from consolidated.00-of-01.pth (module.) and from a save_pretrained directory alike;
* a checkpoint with a missing key, an extra key or a wrong shape is refused with a message listing them;
* an encoder-only degradation-robust VAE checkpoint loads;
* the decoder exported is the degradation-robust VAE's when it differs from SD3's, SD3's when equal or absent;
* a saved position embedding is kept, compared with the sincos grid and warned about when it differs.
"""

import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpir_export import graphs, models, provenance  # noqa: E402
from dpir_export.weights import CheckpointError, read_state_dict  # noqa: E402

FAILURES = []


def check(name, ok, detail=""):
    print(f"  {'ok' if ok else 'FAILED'}: {name}{' (' + detail + ')' if detail else ''}")
    if not ok:
        FAILURES.append(name)


def inputs(model, batch=2, h=6, w=10, tokens=12):
    g = torch.Generator().manual_seed(3)
    c = model.config.in_channels
    return (torch.randn(batch, c, h, w, generator=g), torch.tensor([900.0, 25.0][:batch]),
            torch.randn(batch, c, h, w, generator=g),
            torch.randn(batch, tokens, model.config.joint_attention_dim, generator=g),
            torch.randn(batch, model.config.pooled_projection_dim, generator=g))


def main(tiny):
    tiny = Path(tiny)
    sd3 = tiny / "stable-diffusion-3-medium-diffusers"
    ckpt = tiny / "dpir" / "consolidated.00-of-01.pth"
    quiet = lambda *_: None  # noqa: E731
    model = models.load_transformer(sd3, ckpt, log=quiet)
    z, t, zlq, ctx, pooled = inputs(model)

    with torch.no_grad():
        # 1. Our forward without eta == diffusers' forward (patch embedding, crop, blocks, norm_out, unpatchify).
        model.eta_scale = 0.0
        ours = model(z, t, zlq, ctx, pooled)
        theirs = models._sd3_class().forward(model, hidden_states=z, encoder_hidden_states=ctx,
                                             pooled_projections=pooled, timestep=t, return_dict=False)[0]
        err = (ours - theirs).abs().max().item()
        check("forward without eta equals diffusers' SD3Transformer2DModel.forward", err < 1e-5, f"max abs {err:.1e}")
        model.eta_scale = 1.0

        # 2. eta after block 0, from the spec's formula, written out independently.
        x = model.pos_embed(z)
        temb = model.time_text_embed(t, pooled)
        c = model.context_embedder(ctx)
        cond = model.control_conv(zlq).flatten(2).transpose(1, 2)
        c, x = model.transformer_blocks[0](hidden_states=x, encoder_hidden_states=c, temb=temb)
        n = x[0].numel()
        for b in range(x.shape[0]):
            hb, cb = x[b], cond[b]
            sd_h = ((hb - hb.mean()) ** 2).sum().div(n - 1).sqrt()
            sd_c = ((cb - cb.mean()) ** 2).sum().div(n - 1).sqrt()
            x[b] = hb + ((cb - cb.mean()) / (sd_c + 1e-9) * sd_h + hb.mean()) * 1.0
        for block in model.transformer_blocks[1:]:
            c, x = block(hidden_states=x, encoder_hidden_states=c, temb=temb)
        x = model.proj_out(model.norm_out(x, temb))
        p, co = model.config.patch_size, model.out_channels
        x = x.reshape(2, 3, 5, p, p, co)
        expect = torch.einsum("nhwpqc->nchpwq", x).reshape(2, co, 6, 10)
        err = (model(z, t, zlq, ctx, pooled) - expect).abs().max().item()
        check("eta after block 0 follows the spec's formula", err < 1e-5, f"max abs {err:.1e}")

        # 3. Regenerated position embedding == diffusers' own buffer.
        fresh = models._sd3_class()(**{k: v for k, v in model.config.items() if k in models.sd3_init_args()})
        err = (fresh.pos_embed.pos_embed - model.pos_embed.pos_embed).abs().max().item()
        check("regenerated pos-embed equals diffusers' buffer", err == 0.0, f"max abs {err:.1e}")

    # 4. LQ branch structure (spec 3.1).
    cc = model.control_conv
    convs = [m for m in cc if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in cc if isinstance(m, torch.nn.GroupNorm)]
    check("control_conv: 3 x (Conv3x3 + GroupNorm), strides 1, 2, 1, groups 4, 8, 8, no activation",
          len(cc) == 6 and [m.stride[0] for m in convs] == [1, 2, 1] and [m.kernel_size for m in convs] == [(3, 3)] * 3
          and [m.num_groups for m in norms] == [4, 8, 8] and all(m.eps == 1e-5 and m.affine for m in norms)
          and convs[-1].out_channels == model.inner_dim)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 5. A save_pretrained directory loads to the same weights.
        model.save_pretrained(tmp / "dpir_dir")
        other = models.load_transformer(sd3, tmp / "dpir_dir", log=quiet)
        same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
        check("a save_pretrained directory loads like consolidated.00-of-01.pth", same)

        # 6. Mismatching checkpoints are refused, listing the keys.
        state = {f"module.{k}": v for k, v in read_state_dict(ckpt).items()}
        del state["module.context_embedder.weight"]
        state["module.extra.weight"] = torch.zeros(1)
        state["module.proj_out.bias"] = torch.zeros(3)
        torch.save(state, tmp / "bad.pth")
        try:
            models.load_transformer(sd3, tmp / "bad.pth", log=quiet)
            check("a mismatching checkpoint is refused", False, "it loaded")
        except CheckpointError as e:
            text = str(e)
            check("a mismatching checkpoint is refused, listing missing, unexpected and mis-shaped keys",
                  "context_embedder.weight" in text and "extra.weight" in text and "proj_out.bias" in text, text.splitlines()[0])

        # 7. Encoder-only VAE checkpoint.
        vae_state = read_state_dict(tiny / "dr-vae")
        torch.save({k: v for k, v in vae_state.items() if k.startswith(("encoder.", "quant_conv."))}, tmp / "enc.pth")
        vae, _ = models.load_vae_encoder(tmp / "enc.pth", sd3, log=quiet)
        full, _ = models.load_vae_encoder(tiny / "dr-vae", sd3, log=quiet)
        img = torch.rand(1, 3, 32, 48) * 2 - 1
        with torch.no_grad():
            a = models.VaeEncoderGraph(vae)(img)[0]
            b = models.VaeEncoderGraph(full)(img)[0]
        check("an encoder-only VAE checkpoint loads", vae.decoder is None and torch.equal(a, b))

        # 8. Whose decoder: the degradation-robust VAE's when it has one that differs from SD3's (the tiny models'
        # two VAEs are initialised apart), SD3's when it is equal, absent, or asked for.
        shutil.copytree(sd3 / "vae", tmp / "same-vae")
        choose = lambda vae, wanted="auto": provenance.choose_decoder(vae, sd3, wanted, log=quiet)  # noqa: E731
        check("a degradation-robust VAE with a decoder of its own exports it; --vae-decoder sd3 takes SD3's",
              choose(tiny / "dr-vae") == "dpir" and choose(tiny / "dr-vae", "sd3") == "sd3")
        check("a decoder equal to SD3's, or none, exports SD3's",
              choose(tmp / "same-vae") == "sd3" and choose(tmp / "enc.pth") == "sd3")
        try:
            choose(tmp / "enc.pth", "dpir")
            check("--vae-decoder dpir without decoder weights is refused", False, "it was accepted")
        except CheckpointError as e:
            check("--vae-decoder dpir without decoder weights is refused", "no decoder weights" in str(e))
        job = {"args": {"vae_encoder": str(tiny / "dr-vae"), "sd3": str(sd3), "vae_decoder": "auto"}}
        z = torch.randn(1, vae.config.latent_channels, 4, 6)
        with torch.no_grad():
            decoder = graphs.load_module("vae_decoder", job, log=quiet)
            exported = decoder(z)
            dpir_decoder = models.VaeDecoderGraph(full)(z)
            sd3_decoder = models.VaeDecoderGraph(models.load_vae_decoder(sd3, log=quiet))(z)
        check("the exported decoder is the degradation-robust VAE's, and its module says so",
              decoder.provenance == {"vae_decoder": "dpir"} and torch.equal(exported, dpir_decoder)
              and not torch.equal(exported, sd3_decoder))

        # 9. The position embedding: regenerated when the checkpoint lacks it, compared with the grid when not.
        check("a checkpoint without pos_embed has it regenerated, and says so",
              model.pos_embed_source == {"pos_embed": "regenerated"})
        check("a saved pos_embed equal to the grid is kept and recorded as such",
              other.pos_embed_source == {"pos_embed": "checkpoint", "pos_embed_vs_grid": 0.0}, str(other.pos_embed_source))
        shifted = {f"module.{k}": v for k, v in read_state_dict(ckpt).items()}
        shifted["module.pos_embed.pos_embed"] = model.pos_embed.pos_embed + 0.25
        torch.save(shifted, tmp / "shifted.pth")
        said = []
        loaded = models.load_transformer(sd3, tmp / "shifted.pth", log=said.append)
        difference = loaded.pos_embed_source.get("pos_embed_vs_grid", 0.0)
        check("a saved pos_embed that is not the grid is kept, measured and warned about",
              abs(difference - 0.25) < 1e-6 and any("differs from the sincos grid" in line for line in said)
              and torch.equal(loaded.pos_embed.pos_embed, shifted["module.pos_embed.pos_embed"]), f"{difference:.3g}")

    if FAILURES:
        raise SystemExit(f"{len(FAILURES)} check(s) failed: {', '.join(FAILURES)}")
    print("all converter self-checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
