"""PartialFC v2 written plainly in PyTorch (CPU): the reference benchmarks/partial_fc.py times.

Follows insightface recognition/arcface_torch/partial_fc_v2.py for one process (world size 1, so
the distributed softmax is a plain cross entropy): positives always kept, random negatives up to
the sample rate via top-k of random scores, W[index] gathered with autograd (so W gets a dense
gradient), CosFace/ArcFace/combined margin on the target logit, AdamW on the whole of W as the
reference trains it. Benchmark-only: torch is in requirements-dev.txt.
"""
import math

import torch
import torch.nn.functional as F


class PartialFCV2(torch.nn.Module):

  def __init__(self, num_classes, dim, sample_rate, scale=64.0, m1=1.0, m2=0.0, m3=0.4):
    super().__init__()
    self.num_classes = num_classes
    self.num_sample = int(sample_rate * num_classes)
    self.sample_rate = sample_rate
    self.scale, self.m1, self.m2, self.m3 = scale, m1, m2, m3
    self.weight = torch.nn.Parameter(torch.normal(0, 0.01, (num_classes, dim)))

  @torch.no_grad()
  def sample(self, labels):
    positive = torch.unique(labels, sorted=True)
    if self.num_sample - positive.size(0) >= 0:
      perm = torch.rand(self.num_classes)
      perm[positive] = 2.0
      index = torch.topk(perm, k=self.num_sample)[1]
      index = index.sort()[0]
    else:
      index = positive
    return index, torch.searchsorted(index, labels)

  def margin(self, target_cos):
    if self.m1 == 1.0 and self.m2 == 0.0:
      return target_cos - self.m3
    theta = torch.acos(target_cos.clamp(-1 + 1e-7, 1 - 1e-7))
    with_margin = torch.cos(self.m1 * theta + self.m2) - self.m3
    threshold = math.cos((math.pi - self.m2) / self.m1)
    fallback = target_cos - self.m3 - math.sin(self.m2) * self.m2
    return torch.where(target_cos > threshold, with_margin, fallback)

  def forward(self, embeddings, labels):
    if self.sample_rate < 1:
      index, labels = self.sample(labels)
      weight = self.weight[index]
    else:
      weight = self.weight
    logits = F.linear(F.normalize(embeddings), F.normalize(weight)).clamp(-1, 1)
    rows = torch.arange(labels.size(0))
    target = self.margin(logits[rows, labels])
    logits = logits.clone()
    logits[rows, labels] = target
    return F.cross_entropy(logits * self.scale, labels)


def make_step(num_classes, dim, sample_rate, lr=1e-3, weight_decay=0.0):
  """(step(embeddings, labels) -> loss, head): forward, backward, AdamW update."""
  head = PartialFCV2(num_classes, dim, sample_rate)
  opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)

  def step(embeddings, labels):
    opt.zero_grad(set_to_none=True)
    embeddings = embeddings.detach().requires_grad_(True)
    loss = head(embeddings, labels)
    loss.backward()
    opt.step()
    return float(loss), embeddings.grad

  return step, head
