"""CPU training kernels: Linear, Dropout and LayerNorm with the parameters and values of Paddle's own layers, and
faster GEMM formulations where Paddle's CPU kernels are slow, used only while training in the dynamic graph on CPU.

The model (t2t.py) builds its layers from these classes; each is the Paddle layer it subclasses (same parameters,
same names, same checkpoints), and in eval mode, under to_static, on a GPU and in every export it runs the plain
Paddle forward, which the inference engine fuses. What each replaces, measured side by side on 2 threads:

- Linear: the bias is added as ones[rows, 1] @ bias[1, out], with one bias row per sample. Paddle's CPU backward
  of a broadcast add sums the output gradient over rows with a kernel ~40x slower than a matrix-vector product;
  the GEMM turns that sum into a GEMM and gives the same values (each product is 1 * b).
- Dropout: the mask comes from integer random numbers. Paddle's CPU dropout draws one float per element through
  a slow path, ~50 ms forward + backward for the 6.4M activations of the first T2T Performer (PyTorch: ~35 ms).
  A uniform integer in [0, 2^24) per element, kept where it is >= round(p * 2^24), is the same Bernoulli draw (a
  float32 uniform has 24 bits too): P(drop) = p to within 3e-8, kept values scaled by 1 / (1 - p) as
  upscale_in_train does, all from Paddle's generator, so paddle.seed fixes it. ~20 ms forward + backward.
- LayerNorm: Paddle's forward kernel, and a backward with every reduction as a GEMM with a constant vector.
  Paddle's CPU layer_norm_grad takes ~40x its forward at T2T-ViT's sizes (115 ms against 3 ms for 100k tokens x
  147 channels). Row means are GEMMs with 1 / c and [rows, 1] or [c] factors are spread as rank-1 GEMMs (col @
  row: one exact product per element): Paddle's CPU reductions and broadcasting elementwise kernels are 3-40x
  slower than GEMMs and same-shape kernels (0.55 against 0.13 ms at 6.3k x 256; the GEMM takes 0.06 ms).

Exactness (tests/test_kernels.py checks each against float64 on adversarial inputs, within 1e-5 relative L2):
- the LayerNorm backward recomputes xhat and rstd from two centring passes rather than taking the forward's
  statistics: x - mean1 is exact (Sterbenz) whenever the mean is large against the spread, and the second pass
  removes mean1's rounding, so the centred rows (and the variance, a GEMM of their squares) stay exact to float32
  rounding at any mean / std (up to 1e4, variance below eps, constant rows, width 1); one-pass statistics cancel
  there (6e-4 relative error of dx at mean / std 100);
- its column sums (dweight, dbias) are GEMMs per sample, then summed over the batch: one float32 GEMM over all
  B * T rows (25k at the first Performer) drifts to 3.4e-6 relative from float64 at batch 8 (the reference's
  own: 1.7e-6); so is the Linear's bias gradient (one GEMM over the 25k rows: 3.5e-6 from float64 where the
  official code's sum is 2.6e-7; per sample: 3e-7);
- the bias GEMM has float64's values and gradients at scales 1e-6 to 1e6; the integer dropout's kept values are
  x / (1 - p) to float32 rounding and its gradient is exactly the mask.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F


def _training_on_cpu(layer, x):
    """True where the GEMM formulations pay: training in Paddle's dynamic graph, on CPU."""
    return layer.training and paddle.in_dynamic_mode() and x.place.is_cpu_place()


class Linear(nn.Linear):
    """nn.Linear (same parameters) whose bias gradient is a GEMM when training on CPU; add_bias(y) adds the bias
    to a product the caller computed itself (the backbone attention's transposed GEMMs)."""

    def forward(self, x):
        return self.add_bias(paddle.matmul(x, self.weight))

    def add_bias(self, y):
        if self.bias is None:
            return y
        bias = self.bias if self.bias.dtype == y.dtype else self.bias.astype(y.dtype)  # under AMP
        if _training_on_cpu(self, y):
            # the bias as one row per sample: its gradient is a GEMM per sample, then a sum over the batch
            rows = bias.reshape([1] * (y.ndim - 1) + [-1]).expand(y.shape[:-2] + [1, bias.shape[0]])
            return y + paddle.matmul(paddle.ones(y.shape[:-1] + [1], dtype=y.dtype), rows)
        return y + bias


class Dropout(nn.Dropout):
    """nn.Dropout whose mask comes from 24-bit integer random numbers when training on CPU."""

    def forward(self, x):
        if not 0.0 < self.p < 1.0 or self.axis is not None or self.mode != "upscale_in_train" \
                or not _training_on_cpu(self, x):
            return nn.Dropout.forward(self, x)
        draw = paddle.randint(0, 1 << 24, x.shape, dtype="int32")
        keep = (draw >= round(self.p * (1 << 24))).astype(x.dtype) * (1.0 / (1.0 - self.p))
        return x * keep


class _LayerNormGEMMGrad(paddle.autograd.PyLayer):
    """Paddle's layer_norm forward; its backward with every reduction as a GEMM with a constant vector."""

    @staticmethod
    def forward(ctx, x, weight, bias, epsilon):
        ctx.save_for_backward(x, weight)
        ctx.epsilon = epsilon
        ctx.needs_dx = not x.stop_gradient
        return F.layer_norm(x, x.shape[-1:], weight, bias, epsilon)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        c, eps = x.shape[-1], ctx.epsilon
        x2, dy2 = x.reshape([-1, c]), dy.reshape([-1, c])
        by_c = paddle.full([c, 1], 1.0 / c, dtype=x.dtype)  # row means: GEMMs with 1 / c
        across = paddle.ones([1, c], dtype=x.dtype)  # [rows, 1] factors spread over a row: rank-1 GEMMs
        # xhat and rstd from two centring passes (exact at any mean / std: see the module's docstring)
        xc = x2 - paddle.matmul(paddle.matmul(x2, by_c), across)
        xc = xc - paddle.matmul(paddle.matmul(xc, by_c), across)
        rstd = paddle.rsqrt(paddle.matmul(xc * xc, by_c) + eps)
        xhat = xc * paddle.matmul(rstd, across)
        dy_xhat = dy2 * xhat
        # column sums as GEMMs, per sample and then over the batch
        lead = x.shape[0] if x.ndim == 3 else 1
        ones = paddle.ones([1, 1, x2.shape[0] // lead], dtype=x.dtype)
        dbias = paddle.matmul(ones, dy2.reshape([lead, -1, c])).sum(axis=0).reshape([c])
        dweight = paddle.matmul(ones, dy_xhat.reshape([lead, -1, c])).sum(axis=0).reshape([c])
        if not ctx.needs_dx:  # the first Performer's input: the image's patches
            return None, dweight, dbias
        # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * weight; both row means are GEMMs of
        # what is already there (dy, dy * xhat) with weight / c, and rstd scales the [rows, 1] means, not rows.
        weight_c = (weight / c).unsqueeze(-1)
        mean_g = paddle.matmul(dy2, weight_c) * rstd
        mean_gx = paddle.matmul(dy_xhat, weight_c) * rstd
        dx = (dy2 * paddle.matmul(rstd, weight.unsqueeze(0)) - paddle.matmul(mean_g, across)
              - xhat * paddle.matmul(mean_gx, across))
        return dx.reshape(x.shape), dweight, dbias


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters, same forward kernel) with the GEMM backward when training on CPU."""

    def forward(self, x):
        if not _training_on_cpu(self, x) or self.weight is None or self.bias is None:
            return nn.LayerNorm.forward(self, x)  # not super(): Paddle 2.6 to_static cannot compile it
        return _LayerNormGEMMGrad.apply(x, self.weight, self.bias, self._epsilon)
