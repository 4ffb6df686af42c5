"""LlamaGen's state-dict key layout (its gpt.py and vq_model.py), written out by hand as {key: shape},
independently of Tessera's modules, for the tests that load LlamaGen-format checkpoints."""
from __future__ import annotations


def gpt_shapes(d: int, f: int, layers: int, vocab: int = 16384, classes: int = 1000) -> dict:
    sd = {"tok_embeddings.weight": (vocab, d), "cls_embedding.embedding_table.weight": (classes + 1, d),
          "norm.weight": (d,), "output.weight": (vocab, d)}
    for i in range(layers):
        p = f"layers.{i}."
        sd.update({p + "attention.wqkv.weight": (3 * d, d), p + "attention.wo.weight": (d, d),
                   p + "feed_forward.w1.weight": (f, d), p + "feed_forward.w3.weight": (f, d),
                   p + "feed_forward.w2.weight": (d, f), p + "attention_norm.weight": (d,),
                   p + "ffn_norm.weight": (d,)})
    return sd


def vq_shapes(ch=128, mult=(1, 1, 2, 2, 4), z=256, e=8, codes=16384, res=2, slots=65536) -> dict:
    sd: dict = {"quantize.embedding.weight": (codes, e), "quantize.codebook_used": (slots,)}

    def conv(name, cin, cout, k):
        sd[name + ".weight"], sd[name + ".bias"] = (cout, cin, k, k), (cout,)

    def norm(name, c):
        sd[name + ".weight"], sd[name + ".bias"] = (c,), (c,)

    def block(p, cin, cout):
        norm(p + ".norm1", cin), conv(p + ".conv1", cin, cout, 3), norm(p + ".norm2", cout)
        conv(p + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(p + ".nin_shortcut", cin, cout, 1)

    def attn(p, c):
        norm(p + ".norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{p}.{n}", c, c, 1)

    conv("quant_conv", z, e, 1), conv("post_quant_conv", e, z, 1), conv("encoder.conv_in", 3, ch, 3)
    cin = ch
    for i, m in enumerate(mult):
        for j in range(res):
            block(f"encoder.conv_blocks.{i}.res.{j}", cin, ch * m)
            cin = ch * m
            if i == len(mult) - 1:
                attn(f"encoder.conv_blocks.{i}.attn.{j}", cin)
        if i != len(mult) - 1:
            conv(f"encoder.conv_blocks.{i}.downsample.conv", cin, cin, 3)
    block("encoder.mid.0", cin, cin), attn("encoder.mid.1", cin), block("encoder.mid.2", cin, cin)
    norm("encoder.norm_out", cin), conv("encoder.conv_out", cin, z, 3)
    conv("decoder.conv_in", z, cin, 3)
    block("decoder.mid.0", cin, cin), attn("decoder.mid.1", cin), block("decoder.mid.2", cin, cin)
    for k, m in enumerate(reversed(mult)):
        for j in range(res + 1):
            block(f"decoder.conv_blocks.{k}.res.{j}", cin, ch * m)
            cin = ch * m
            if k == 0:
                attn(f"decoder.conv_blocks.{k}.attn.{j}", cin)
        if k != len(mult) - 1:
            conv(f"decoder.conv_blocks.{k}.upsample.conv", cin, cin, 3)
    norm("decoder.norm_out", cin), conv("decoder.conv_out", cin, 3, 3)
    return sd
