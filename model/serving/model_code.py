"""The code of a served model package (MLflow models-from-code, logged by model/serving/pyfunc.py):
MLflow runs this file to load the model instead of unpickling a Python object."""
from mlflow.models import set_model

from model.serving.pyfunc import MVPServingModel

set_model(MVPServingModel())
