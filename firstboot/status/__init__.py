"""The status console after first boot: the model (what the appliance is doing, the menu's
actions) and its views."""
