"""`tlcli push`: a trained run packaged the way the Hugging Face Hub and its libraries expect."""
