"""zoo_planar_vae: planar and radial flows, and the planar-flow VAE of
Rezende & Mohamed (2015), "Variational Inference with Normalizing Flows".

Layers (`zoo.layers`): `planar`, `radial`. Model (`zoo.models`): `planar_vae`,
a DLGM/VAE whose encoder predicts the mean, log-variance and the parameters of
all K planar (or radial) flows for each input. `energies` holds the paper's
2-D test densities U1-U4 (Figure 3).
"""
