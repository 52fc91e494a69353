"""First boot of the appliance: seeds, console wizard, network, registration."""
