"""The code of a served model package (MLflow models-from-code, logged by model/serving/pyfunc.py).

MLflow copies this file into the package and runs it to load the model, instead of unpickling a
Python object; the classes come from the installed `mvp` package.
"""
from mlflow.models import set_model

from model.serving.pyfunc import MVPServingModel

set_model(MVPServingModel())
