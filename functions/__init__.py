"""The function app's triggers: one Blueprint per trigger, thin over `autoretrain.loop`."""
