"""VQ image tokenizer in LlamaGen's VQ design: conv encoder, l2-normalised codebook, conv decoder.

Module names follow LlamaGen (`encoder.conv_blocks.{i}.res.{j}`, `quantize.embedding`, ...) so
that `vq_ds16_c2i.pt` loads strictly. Images are float in [-1, 1], NCHW; codes are int64
`[B, h, w]`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VQConfig


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels (used at the lowest resolution)."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = norm(c, groups)
        self.q, self.k, self.v = (nn.Conv2d(c, c, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = x.shape
        q = self.q(h).reshape(b, c, hh * ww).transpose(1, 2)
        k = self.k(h).reshape(b, c, hh * ww)
        v = self.v(h).reshape(b, c, hh * ww)
        w = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)
        out = torch.bmm(v, w.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(c: int, groups: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(c, c, groups, dropout), AttnBlock(c, groups), ResnetBlock(c, c, groups, dropout)])


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        g, mult, n = cfg.norm_groups, cfg.ch_mult, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, 1, 1)
        self.conv_blocks = nn.ModuleList()
        cin = cfg.ch
        for level in range(n):
            block, cout = nn.Module(), cfg.ch * mult[level]
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                block.res.append(ResnetBlock(cin, cout, g, cfg.dropout))
                cin = cout
                if level == n - 1:
                    block.attn.append(AttnBlock(cin, g))
            if level != n - 1:
                block.downsample = Downsample(cin)
            self.conv_blocks.append(block)
        self.mid = _mid(cin, g, cfg.dropout)
        self.norm_out = norm(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.conv_blocks:
            for i, res in enumerate(block.res):
                h = res(h)
                if len(block.attn):
                    h = block.attn[i](h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        g, mult, n = cfg.norm_groups, cfg.ch_mult, len(cfg.ch_mult)
        cin = cfg.ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, 1, 1)
        self.mid = _mid(cin, g, cfg.dropout)
        self.conv_blocks = nn.ModuleList()
        for level in reversed(range(n)):
            block, cout = nn.Module(), cfg.ch * mult[level]
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                block.res.append(ResnetBlock(cin, cout, g, cfg.dropout))
                cin = cout
                if level == n - 1:
                    block.attn.append(AttnBlock(cin, g))
            if level != 0:
                block.upsample = Upsample(cin)
            self.conv_blocks.append(block)
        self.norm_out = norm(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.in_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for block in self.conv_blocks:
            for i, res in enumerate(block.res):
                h = res(h)
                if len(block.attn):
                    h = block.attn[i](h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest code by l2 distance between l2-normalised vectors; straight-through gradients."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_dim)
        self.embedding.weight.data.uniform_(-1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)
        self.register_buffer("codebook_used", torch.zeros(cfg.usage_slots))

    def codebook(self) -> torch.Tensor:
        return F.normalize(self.embedding.weight, p=2, dim=-1)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """`z [N, C]` -> squared distances `[N, K]` between normalised z and normalised codes."""
        z = F.normalize(z, p=2, dim=-1)
        e = self.codebook()
        return z.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1)[None] - 2 * z @ e.t()

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """`z [B, C, h, w]` -> codes `[B, h, w]`."""
        b, c, h, w = z.shape
        d = self.distances(z.permute(0, 2, 3, 1).reshape(-1, c))
        return d.argmin(dim=1).view(b, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes `[B, h, w]` -> normalised code vectors `[B, C, h, w]`."""
        return F.embedding(codes, self.codebook()).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor):
        codes = self.indices(z)
        zn = F.normalize(z, p=2, dim=1)
        zq = self.lookup(codes)
        vq_loss = F.mse_loss(zq, zn.detach())
        commit = self.cfg.commit_beta * F.mse_loss(zq.detach(), zn)
        loss = vq_loss + commit
        if self.cfg.entropy_ratio > 0:
            loss = loss + self.cfg.entropy_ratio * self.entropy_loss(z)
        zq = zn + (zq - zn).detach()
        return zq, loss, codes

    def entropy_loss(self, z: torch.Tensor) -> torch.Tensor:
        """Low per-sample entropy, high codebook-average entropy: keeps all codes in use."""
        d = self.distances(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
        p = torch.softmax(-d / 0.01, dim=-1)
        per_sample = -(p * torch.log(p + 1e-5)).sum(-1).mean()
        avg = p.mean(0)
        return per_sample + (avg * torch.log(avg + 1e-5)).sum()


class VQModel(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_dim, cfg.z_channels, 1)

    def encode_codes(self, images: torch.Tensor) -> torch.Tensor:
        """images `[B, 3, H, W]` in [-1, 1] -> codes `[B, H/ds, W/ds]`."""
        return self.quantize.indices(self.quant_conv(self.encoder(images)))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes `[B, h, w]` -> images `[B, 3, h*ds, w*ds]`, roughly in [-1, 1]."""
        return self.decoder(self.post_quant_conv(self.quantize.lookup(codes)))

    def forward(self, images: torch.Tensor):
        """Training pass: reconstruction, VQ loss, codes."""
        zq, vq_loss, codes = self.quantize(self.quant_conv(self.encoder(images)))
        return self.decoder(self.post_quant_conv(zq)), vq_loss, codes

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class VQEncoderForExport(nn.Module):
    def __init__(self, vq: VQModel):
        super().__init__()
        self.vq = vq

    def forward(self, images):
        return self.vq.encode_codes(images)


class VQDecoderForExport(nn.Module):
    def __init__(self, vq: VQModel):
        super().__init__()
        self.vq = vq

    def forward(self, codes):
        return self.vq.decode_codes(codes)
