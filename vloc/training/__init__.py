"""DELG training (:mod:`vloc.training.trainer`) and map-adaptive training (:mod:`vloc.training.adapt`)."""
