"""The networks and their training steps: MLP/TCN blocks, the transformer, the losses, and each
paper's model (KinEMbed, the MAEs, CPEP, EMBridge, EMG-JEPA) with its training function."""
