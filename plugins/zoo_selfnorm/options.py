"""Config fields shared by the self-normalizing models (the reference's options)."""

import dataclasses

__all__ = ["SelfNormOptions"]


@dataclasses.dataclass(frozen=True)
class SelfNormOptions:
    recon_loss_weight: float = 1.0
    """lambda: weight of each layer's reconstruction loss ||x - R W x||^2 (the initial value under GECO)."""
    modified_grad: bool = True
    """Train with the self-normalized gradient (W^-T replaced by R^T); False: exact log-det and gradient."""
    nll_grad_scale: float = 0.5
    """Scale of the likelihood gradient of W and R in self-normalizing layers (reference: 1/2, the average
    of the W- and R-parametrised gradients; with Adam, 1/2 is the same as doubling recon_loss_weight)."""
    sym_recon_grad: bool = False
    """Use the mean of ||x - R W x||^2 and ||z - W R z||^2 (the reference's symmetric variant)."""
    only_R_recon: bool = False
    """Reconstruction loss trains R only (W x treated as constant)."""
    recon_loss_lr: float = 0.0
    """GECO learning rate: lambda <- lambda * exp(lr * (EMA(rec) - recon_tolerance)) per layer and step; 0: fixed."""
    recon_alpha: float = 0.9
    """GECO: decay of the per-layer moving average of the reconstruction error."""
    recon_tolerance: float = 0.0
    """GECO: target reconstruction error (the reference uses 0: lambda only grows)."""
    approx_sample: bool = True
    """Sample with the fast approximate inverse through R (False: the exact inverse, a solve)."""

    def layer_options(self) -> dict:
        return dict(modified_grad=self.modified_grad, nll_grad_scale=self.nll_grad_scale,
                    sym_recon_grad=self.sym_recon_grad, only_R_recon=self.only_R_recon)

    def wrap(self, model):
        """Configure every self-normalizing layer of `model` and wrap it in `SelfNormModel`."""
        from zoo_selfnorm.model import SelfNormModel, configure_selfnorm

        model = configure_selfnorm(model, recon_loss_weight=self.recon_loss_weight, **self.layer_options())
        return SelfNormModel(model, geco_lr=float(self.recon_loss_lr), geco_alpha=float(self.recon_alpha),
                             geco_tolerance=float(self.recon_tolerance), approx_sample=bool(self.approx_sample))
