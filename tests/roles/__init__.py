"""The model roles in process on the embedded weights, and the tensor handlers both servers use."""
